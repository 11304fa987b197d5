"""One reader per format, and ``read_scan``: the one entry that turns a scan, on disk
(``covidct prepare``) or in memory (a dashboard upload), into a canonical HU ``Volume``.

- ``dicom``: probe files, group and choose series (``select_series``), read one series;
- ``nifti``: one volume per file (3D, or the first of 4D);
- ``images``: 8-bit slice images (no HU; each is one slice, read with ``read_image``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data_prep.readers.dicom import DicomHeader, read_series
from data_prep.readers.nifti import read_nifti
from data_prep.volume import Volume

__all__ = ["DicomSeries", "NiftiFile", "read_scan"]


@dataclass(frozen=True)
class DicomSeries:
    """The probed files of one DICOM series (``dicom.select_series`` chose it)."""

    headers: Sequence[DicomHeader]


@dataclass(frozen=True)
class NiftiFile:
    """A NIfTI file on disk, or held in memory (``data``; ``path`` then only names it)."""

    path: Path
    data: bytes | None = None
    label: int | None = None  # the class of the folder it lies in, if any
    max_bytes: int | None = None  # refuse a file that decompresses to more


def read_scan(source: DicomSeries | NiftiFile) -> Volume:
    """The scan as a canonical HU volume with its geometry and the readers' flags.

    Raises:
        data_prep.errors.InputError: (a subclass) what is wrong with the input, in words.
    """
    if isinstance(source, DicomSeries):
        return read_series(source.headers)
    return read_nifti(source.path, label=source.label, data=source.data, max_bytes=source.max_bytes)
