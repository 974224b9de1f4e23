"""Everything that touches MRML (3D Slicer's scene), on any ``vtkMRMLScene``:

- :mod:`.runs`: :class:`~.runs.SegGradCAMSceneLogic`, the one class front ends use: a run in
  the worker process (:mod:`.worker`) from input nodes to output nodes;
- :mod:`.inputs`: geometry of volume nodes, input checks, inputs and target regions written
  with their world geometry;
- :mod:`.outputs`: outputs as label map, segmentation and heatmap nodes with the input's
  geometry, provenance, faithfulness table and chart, colours, display;
- :mod:`.findings`: a run's findings (``--findings``/``--point``) as a findings table, a heatmap per
  finding and probability and entropy maps; the slice views' jump to a finding; "Why here?" points;
- :mod:`.evaluation_plots`: Deletion/Insertion curves as plot chart and table nodes;
- :mod:`.slice_views`: slice views rendered offscreen by Slicer's own slice logic.

Inside 3D Slicer only: :mod:`.widget` (the module panel's behaviour, its Findings section in
:mod:`.findings_panel`) and :mod:`.install` (installing missing packages).
"""
