"""The CT files that ship inside pydicom, read by our reader and by SimpleITK independently."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from data_prep.discover import discover
from data_prep.errors import NotAnImageError, PixelDecodeError
from data_prep.readers.dicom import probe_file, read_series, series_rejection

TEST_FILES = Path(get_testdata_file("CT_small.dcm", download=False)).parent


def _series(folder: Path):
    headers = [probe_file(p) for p in sorted(folder.iterdir())]
    return headers


def test_ct_series_matches_simpleitk_voxels_and_spacing():
    folder = TEST_FILES / "dicomdirtests" / "98892001" / "CT5N"
    vol = read_series(_series(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    ref = sitk.GetArrayFromImage(img).astype(np.float32)  # (z, y, x) in LPS index order
    direction = np.array(img.GetDirection()).reshape(3, 3)
    # bring SimpleITK's array to our canonical (increasing L, P, S) order
    for axis_world, arr_axis in ((0, 2), (1, 1), (2, 0)):
        if direction[axis_world, 2 - arr_axis] < 0:
            ref = np.flip(ref, axis=arr_axis)
    assert vol.array.shape == ref.shape
    np.testing.assert_array_equal(vol.array, ref)
    sx, sy, sz = img.GetSpacing()
    np.testing.assert_allclose(vol.spacing, (sz, sy, sx), rtol=1e-4)


def test_single_ct_slice_reads_as_hu_with_rescale():
    path = Path(get_testdata_file("CT_small.dcm", download=False))
    vol = read_series([probe_file(path)])
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(vol.array[0], expected)
    assert vol.array.shape == (1, 128, 128)


@pytest.mark.parametrize("name", ["693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"])
def test_jpeg2000_ct_files_decode(name):
    path = Path(get_testdata_file(name, download=False))
    vol = read_series([probe_file(path)])
    assert vol.array.shape == (1, 512, 512)
    assert np.isfinite(vol.array).all()
    assert vol.array.min() < -500  # air in HU: the rescale was applied


def test_gap_between_slices_is_flagged():
    vol = read_series(_series(TEST_FILES / "dicomdirtests" / "77654033" / "CT2"))
    assert any("gap" in f for f in vol.flags), vol.flags


@pytest.mark.parametrize("name", ["DICOMDIR", "DICOMDIR-implicit", "DICOMDIR-bigEnd"])
def test_dicomdir_is_understood_as_an_index_not_an_image(name):
    with pytest.raises(NotAnImageError, match="DICOMDIR"):
        probe_file(TEST_FILES / "dicomdirtests" / name)


def test_truncated_file_gives_a_decode_error_not_a_crash():
    path = Path(get_testdata_file("MR_truncated.dcm", download=False))
    header = probe_file(path)
    with pytest.raises(PixelDecodeError):
        read_series([header])


def test_localizers_and_other_modalities_are_not_chosen():
    found = discover([TEST_FILES / "dicomdirtests"])
    reasons = " | ".join(s.reason for s in found.skips)
    assert "localizer" in reasons
    assert "modality MR, not CT" in reasons
    assert "DICOMDIR index" in reasons
    chosen = {Path(j.sources[0]).parent.name for j in found.jobs}
    assert chosen == {"CT5N", "CT2"}
    for job in found.jobs:
        assert series_rejection(list(job.headers)) is None
