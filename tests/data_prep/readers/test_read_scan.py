"""``data_prep.readers.read_scan``: the one entry from a scan to a HU volume, for files on disk
(prepare) and bytes in memory (uploads) alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from data_prep.errors import InputError
from data_prep.readers import DicomSeries, NiftiFile, read_scan
from data_prep.readers.dicom import probe_file, read_series
from data_prep.readers.nifti import read_nifti

NIFTI = Path(data_path) / "example4d.nii.gz"
CT = Path(get_testdata_file("CT_small.dcm", download=False))


def test_a_nifti_on_disk_and_the_same_bytes_in_memory_read_alike():
    on_disk = read_scan(NiftiFile(NIFTI, label=1))
    in_memory = read_scan(NiftiFile(Path("upload.nii.gz"), data=NIFTI.read_bytes()))
    np.testing.assert_array_equal(on_disk.array, in_memory.array)
    np.testing.assert_allclose(on_disk.affine, in_memory.affine)
    np.testing.assert_array_equal(on_disk.array, read_nifti(NIFTI).array)  # the reader itself
    assert on_disk.label == 1 and in_memory.label is None


def test_a_dicom_series_from_files_and_from_bytes_read_alike():
    from_file = read_scan(DicomSeries([probe_file(CT)]))
    from_bytes = read_scan(DicomSeries([probe_file("upload.dcm", data=CT.read_bytes())]))
    np.testing.assert_array_equal(from_file.array, from_bytes.array)
    np.testing.assert_array_equal(from_file.array, read_series([probe_file(CT)]).array)
    assert from_file.array.shape[0] == 1


def test_a_volume_larger_than_allowed_is_refused_before_it_is_read():
    with pytest.raises(InputError):
        read_scan(NiftiFile(Path("big.nii.gz"), data=NIFTI.read_bytes(), max_bytes=1000))
