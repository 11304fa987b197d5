"""Uploads for the dashboard tests (the runs they show: the session fixture ``runs``)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path


def nifti_upload(cohort: Path) -> tuple[str, bytes]:
    path = sorted((cohort / "nifti").glob("*.nii.gz"))[0]
    return path.name, path.read_bytes()


def dicom_zip(cohort: Path) -> bytes:
    series = sorted(p for p in (cohort / "dicom").glob("*/*/*") if p.name == "2_chest_axial")[0]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(series.iterdir()):
            zf.writestr(p.name, p.read_bytes())
    return buf.getvalue()
