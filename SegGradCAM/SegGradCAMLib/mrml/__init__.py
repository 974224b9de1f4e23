"""Everything that touches MRML (3D Slicer's scene), on any ``vtkMRMLScene``:

- :mod:`.scene_logic`: outputs as label map, segmentation and heatmap nodes with the
  input's geometry, display, provenance, target regions;
- :mod:`.evaluation_plots`: Deletion/Insertion curves as plot chart and table nodes;
- :mod:`.slice_views`: slice views rendered offscreen by Slicer's own slice logic.
"""
