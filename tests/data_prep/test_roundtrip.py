"""Phantoms written by synth come back identical through prepare's readers and independent ones."""

from __future__ import annotations

from pathlib import Path

import dicom2nifti
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale

from data_prep.readers.dicom import decode_slice, probe_file, read_series
from data_prep.readers.nifti import read_nifti
from data_prep.synthetic.cohort import make_identities, patient_rng, write_dicom_series, write_nifti
from data_prep.synthetic.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(patient_rng(5, 1), n_slices=10, matrix=40, positive=True, burden="severe")


@pytest.fixture(scope="module")
def identity():
    return make_identities(5, 1)[0]


def _headers(folder: Path):
    return [probe_file(p) for p in sorted(folder.iterdir()) if p.is_file()]


@pytest.mark.parametrize("intercept", [0, -1024])
def test_dicom_round_trip_is_exact_in_hu_and_geometry(tmp_path, phantom, identity, intercept):
    write_dicom_series(phantom, tmp_path / "s", identity=identity, rescale_intercept=intercept)
    vol = read_series(_headers(tmp_path / "s"))
    np.testing.assert_array_equal(vol.array, phantom.hu.astype(np.float32))
    np.testing.assert_allclose(vol.affine, phantom.affine, atol=1e-6)
    np.testing.assert_allclose(vol.spacing, phantom.spacing, rtol=1e-6)
    assert vol.flags == []


def test_nifti_round_trip_is_exact_in_hu_and_geometry(tmp_path, phantom):
    path = write_nifti(phantom, tmp_path / "p.nii.gz")
    vol = read_nifti(path)
    np.testing.assert_array_equal(vol.array, phantom.hu.astype(np.float32))
    np.testing.assert_allclose(vol.affine, phantom.affine, atol=1e-4)


def test_dicom2nifti_conversion_agrees_with_our_dicom_reader(tmp_path, phantom, identity):
    write_dicom_series(phantom, tmp_path / "s", identity=identity, rescale_intercept=-1024)
    out = tmp_path / "converted.nii.gz"
    dicom2nifti.dicom_series_to_nifti(str(tmp_path / "s"), str(out), reorient_nifti=False)
    independent = read_nifti(out)
    ours = read_series(_headers(tmp_path / "s"))
    np.testing.assert_allclose(independent.array, ours.array)
    np.testing.assert_allclose(independent.affine, ours.affine, atol=1e-3)


def _rewrite(folder: Path, edit) -> None:
    for i, p in enumerate(sorted(folder.iterdir(), key=lambda p: _z(p))):
        ds = pydicom.dcmread(p)
        edit(i, ds)
        ds.save_as(p)


def _z(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def test_gantry_tilt_is_detected_from_sheared_positions(tmp_path, phantom, identity):
    write_dicom_series(phantom, tmp_path / "s", identity=identity)
    dz = phantom.spacing[0]
    shear = np.tan(np.radians(15.0)) * dz

    def tilt(i, ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + i * shear, z]

    _rewrite(tmp_path / "s", tilt)
    vol = read_series(_headers(tmp_path / "s"))
    assert any("gantry tilt of 15.0 degrees" in f for f in vol.flags), vol.flags


def test_gantry_tilt_tag_is_reported_for_a_single_slice():
    path = Path(get_testdata_file("J2K_pixelrep_mismatch.dcm", download=False))
    vol = read_series([probe_file(path)])
    assert any("tilt" in f for f in vol.flags), vol.flags


def test_duplicate_positions_are_dropped_and_reported(tmp_path, phantom, identity):
    files = write_dicom_series(phantom, tmp_path / "s", identity=identity)
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "s" / "copy.dcm")
    vol = read_series(_headers(tmp_path / "s"))
    assert vol.n_slices == phantom.hu.shape[0]
    assert any("duplicate positions" in f for f in vol.flags)


def test_missing_slice_is_reported_as_a_gap(tmp_path, phantom, identity):
    write_dicom_series(phantom, tmp_path / "s", identity=identity)
    middle = sorted((tmp_path / "s").iterdir(), key=_z)[4]
    middle.unlink()
    vol = read_series(_headers(tmp_path / "s"))
    assert vol.n_slices == phantom.hu.shape[0] - 1
    assert any("gap" in f for f in vol.flags)


def test_missing_positions_fall_back_to_instance_number(tmp_path, phantom, identity):
    write_dicom_series(phantom, tmp_path / "s", identity=identity)

    def strip(i, ds):
        del ds.ImagePositionPatient

    _rewrite(tmp_path / "s", strip)
    vol = read_series(_headers(tmp_path / "s"))
    assert any("ImagePositionPatient missing" in f for f in vol.flags)
    np.testing.assert_array_equal(vol.array, phantom.hu.astype(np.float32))


def test_mirrored_orientation_is_brought_back_to_canonical(tmp_path, phantom, identity):
    write_dicom_series(phantom, tmp_path / "s", identity=identity)
    width = phantom.hu.shape[2] * phantom.spacing[2]

    def mirror(i, ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [x + width - phantom.spacing[2], y, z]
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()

    _rewrite(tmp_path / "s", mirror)
    vol = read_series(_headers(tmp_path / "s"))
    np.testing.assert_array_equal(vol.array, phantom.hu.astype(np.float32))
    np.testing.assert_allclose(vol.affine, phantom.affine, atol=1e-4)


NATIVE_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",
]


@pytest.mark.parametrize("name", NATIVE_FILES)
def test_raw_pixel_fast_path_equals_pydicom(name):
    path = Path(get_testdata_file(name, download=False))
    header = probe_file(path)
    assert header.raw_pixels is not None  # the fast path is really taken
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(decode_slice(header), apply_rescale(ds.pixel_array, ds))


def test_raw_pixel_fast_path_ignores_bits_above_bits_stored(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    arr = ds.pixel_array.astype(np.int16)
    ds.BitsStored = 12
    ds.HighBit = 11
    # set bit 13 everywhere: not pixel data when only 12 bits are stored
    ds.PixelData = (arr.view(np.uint16) | 0x2000).astype(np.uint16).tobytes()
    out = tmp_path / "twelve.dcm"
    ds.save_as(out)
    header = probe_file(out)
    assert header.raw_pixels is not None
    ref = pydicom.dcmread(out)
    np.testing.assert_array_equal(decode_slice(header), apply_rescale(ref.pixel_array, ref))
