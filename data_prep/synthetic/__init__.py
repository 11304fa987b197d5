"""The built-in synthetic cohort (``covidct synth``): phantom chest CTs written as real DICOM
and NIfTI files, with labels and per-slice truth. ``phantom.py`` draws one patient's volume
(anatomy, findings, scanner) in one of two styles; ``cohort.py`` plans a cohort and writes it.
Nothing here is used by ingestion: the cohort goes through ``covidct prepare`` like any scans.
"""
