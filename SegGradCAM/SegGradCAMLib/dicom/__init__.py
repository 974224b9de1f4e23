"""DICOM in and out: the source series of a run, the SEG and Parametric Maps it writes, DICOMweb."""
