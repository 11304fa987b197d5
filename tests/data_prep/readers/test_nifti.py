"""The NIfTI files that ship inside nibabel: orientation, 4D, undefined orientation, bad files."""

import gzip
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from data_prep.errors import NotAnImageError
from data_prep.readers.nifti import read_nifti

DATA = Path(data_path)


def _nibabel_canonical_lps(path: Path) -> np.ndarray:
    """Independent route: nibabel's own RAS canonical image, then RAS -> our (S, P, L) order."""
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    # RAS index order (i->R, j->A, k->S) to ours (z->S, y->P, x->L)
    return np.transpose(data[::-1, ::-1, :], (2, 1, 0))


@pytest.mark.parametrize(
    "name", ["anatomical.nii", "reoriented_anat_moved.nii", "example4d.nii.gz"]
)
def test_reorientation_agrees_with_nibabel_canonical(name):
    vol = read_nifti(DATA / name)
    np.testing.assert_allclose(vol.array, _nibabel_canonical_lps(DATA / name), rtol=1e-6)


def test_world_position_of_every_corner_is_preserved():
    path = DATA / "anatomical.nii"
    img = nib.load(path)
    vol = read_nifti(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    rng = np.random.default_rng(1)
    for _ in range(20):
        z, y, x = (int(rng.integers(0, s)) for s in vol.array.shape)
        lps = (vol.affine @ [z, y, x, 1])[:3]
        ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
        ijk = np.rint(np.linalg.solve(img.affine, ras)[:3]).astype(int)
        assert vol.array[z, y, x] == data[tuple(ijk)]


def test_4d_file_uses_first_volume_and_says_so():
    vol = read_nifti(DATA / "example4d.nii.gz")
    assert vol.array.ndim == 3
    assert any("4D" in f for f in vol.flags)


def test_undefined_orientation_is_flagged(tmp_path):
    img = nib.load(DATA / "anatomical.nii")
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    out = tmp_path / "noorient.nii"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, img.header), out)
    hdr = nib.load(out).header
    assert int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0
    vol = read_nifti(out)
    assert any("orientation undefined" in f for f in vol.flags)


def test_gzipped_file_named_nii_is_read_and_flagged(tmp_path):
    fake = tmp_path / "scan.nii"
    shutil.copy(DATA / "example4d.nii.gz", fake)
    vol = read_nifti(fake)
    np.testing.assert_allclose(vol.array, read_nifti(DATA / "example4d.nii.gz").array)
    assert any("gzip-compressed but the name ends in .nii" in f for f in vol.flags)


def test_truncated_gzip_is_rejected_with_a_reason(tmp_path):
    data = (DATA / "example4d.nii.gz").read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(NotAnImageError, match=r"gzip|truncated"):
        read_nifti(bad)


def test_random_bytes_named_nii_are_rejected(tmp_path):
    bad = tmp_path / "noise.nii"
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(NotAnImageError):
        read_nifti(bad)
    gz = tmp_path / "noise.nii.gz"
    gz.write_bytes(gzip.compress(os.urandom(2000)))
    with pytest.raises(NotAnImageError):
        read_nifti(gz)
