"""Faithfulness metrics for segmentation explanations (arrays/tensors in, numbers out).

- :mod:`.deletion_insertion`: segmentation-aware Deletion and Insertion curves
  (Petsiuk et al. 2018) scored on the original predicted mask.
- :mod:`.road`: ROAD (Rong et al. 2022), MoRF/LeRF with noisy linear imputation.
- :mod:`.sanity`: baseline explanations (random, mask, gradient saliency) and the
  cascading model-randomisation test (Adebayo et al. 2018).
"""
