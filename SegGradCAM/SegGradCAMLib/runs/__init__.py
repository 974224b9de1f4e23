"""One run on one volume or data set, files in and files out: :mod:`.explain` (``explain.json``
and the heatmaps), :mod:`.evaluate` (``metrics.json``, plots, report), with the heatmap files
(:mod:`.heatmap_files`), the output folder whole or absent (:mod:`.outputs`) and the run's
threads and memory (:mod:`.resources`). The entry points for every front end are
:func:`SegGradCAMLib.explain` and :func:`SegGradCAMLib.evaluate`."""
