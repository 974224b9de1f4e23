"""How faithful are the heatmaps? Metrics, the dataset loop, the report and ROAR.

- :mod:`.deletion_insertion`: segmentation-aware Deletion and Insertion curves
  (Petsiuk et al. 2018) scored on the original predicted mask.
- :mod:`.road`: ROAD (Rong et al. 2022), MoRF/LeRF with noisy linear imputation.
- :mod:`.sanity`: baseline explanations (random, mask, gradient saliency) and the
  cascading model-randomisation test (Adebayo et al. 2018).
- :mod:`.energy`: heatmap energy inside, around and beyond a mask.
- :mod:`.cases`: the data of an evaluation (volumes per case, the demo slices).
- :mod:`.scoring`: the evaluation loop over cases, its rows, curves and saved results.
- :mod:`.statistics`: bootstrap intervals, comparisons with the baselines, mean curves.
- :mod:`.report`: metrics.json/csv, summary.md, curve plots and report.html.
- :mod:`.roar`: ROAR/KAR (Hooker et al. 2019) on the demo recipe, with retraining.
"""
