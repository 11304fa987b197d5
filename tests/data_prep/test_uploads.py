"""Dashboard uploads: read in memory, preprocessed exactly as covidct prepare, bad input named."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data_prep.errors import InputError
from data_prep.pipeline import PrepConfig, prepare
from data_prep.readers.dicom import probe_file, read_series
from data_prep.readers.nifti import read_nifti
from data_prep.uploads import UploadError, UploadLimits, read_upload
from data_prep.worker import SliceSettings, hu_volume_slices

SETTINGS = SliceSettings(image_size=32)


def _series_dirs(cohort: Path) -> list[Path]:
    return sorted(p for p in (cohort / "dicom").glob("*/*/*") if p.name == "2_chest_axial")


def _files(folder: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]


def _zip(entries: list[tuple[str, bytes]], **kw) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, **kw) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def prepared_shards(cohort, tmp_path_factory) -> list[np.ndarray]:
    out = tmp_path_factory.mktemp("uploads") / "prep"
    prepare(
        [cohort],
        out,
        config=PrepConfig(slices=SETTINGS, workers=1),
        labels=[cohort / "labels.csv"],
    )
    return [np.load(p) for p in sorted((out / "slices").glob("*.npy"))]


def _in_shards(slices: np.ndarray, shards: list[np.ndarray]) -> bool:
    return any(s.shape == slices.shape and np.array_equal(s, slices) for s in shards)


def test_dicom_files_and_a_zipped_study_give_exactly_the_prepared_slices(cohort, prepared_shards):
    series = _series_dirs(cohort)[0]
    from_files = read_upload(_files(series), SETTINGS)
    assert from_files.kind == "hu" and from_files.slices.dtype == np.uint8
    assert _in_shards(from_files.slices, prepared_shards)  # identical to covidct prepare
    study = series.parent  # the whole study, localizer included
    zipped = _zip(
        [
            (str(p.relative_to(study)), p.read_bytes())
            for p in sorted(study.rglob("*"))
            if p.is_file()
        ]
    )
    from_zip = read_upload([("study.zip", zipped)], SETTINGS)
    np.testing.assert_array_equal(from_zip.slices, from_files.slices)
    assert from_zip.display.shape[0] == from_zip.slices.shape[0]
    assert from_zip.display.shape[1:] == (48, 48)  # the scan's own resolution for the viewer


def test_in_memory_dicom_reading_equals_reading_from_disk(cohort):
    series = _series_dirs(cohort)[1]
    paths = sorted(series.iterdir())
    disk = read_series([probe_file(p) for p in paths])
    memory = read_series([probe_file(p.name, data=p.read_bytes()) for p in paths])
    np.testing.assert_array_equal(memory.array, disk.array)
    np.testing.assert_allclose(memory.affine, disk.affine)


def test_nifti_upload_equals_the_prepared_volume(cohort, prepared_shards):
    path = sorted((cohort / "nifti").glob("*.nii.gz"))[0]
    scan = read_upload([(path.name, path.read_bytes())], SETTINGS)
    want = hu_volume_slices(read_nifti(path), SETTINGS).slices
    np.testing.assert_array_equal(scan.slices, want)
    assert _in_shards(scan.slices, prepared_shards)
    assert "NIfTI" in scan.description


def test_png_slices_in_name_order(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i in (10, 2, 1):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(buf, "PNG")
        files.append((f"slice{i}.png", buf.getvalue()))
    scan = read_upload(files, SETTINGS)
    assert scan.kind == "gray8" and scan.slices.shape == (3, 32, 32)
    first = np.asarray(Image.open(io.BytesIO(files[2][1])))  # slice1 comes first
    np.testing.assert_array_equal(scan.display[0], first)


def test_junk_next_to_a_series_is_reported_and_the_series_still_read(cohort):
    series = _series_dirs(cohort)[0]
    files = [*_files(series), ("notes.txt", b"not an image"), ("scan.dcm", b"\x00" * 300)]
    scan = read_upload(files, SETTINGS)
    assert len(scan.skipped) == 2
    assert any(s.startswith("notes.txt: ") for s in scan.skipped)
    assert any(s.startswith("scan.dcm: ") and "DICOM" in s for s in scan.skipped)


@pytest.mark.parametrize(
    "files, message",
    [
        ([], "no file uploaded"),
        ([("a.dcm", b"garbage" * 100)], "no CT scan found"),
        ([("report.pdf", b"%PDF-1.4 ...")], "no CT scan found"),
        ([("x.zip", b"PK\x03\x04 broken")], "no CT scan found"),
    ],
)
def test_unusable_uploads_get_a_clear_error(files, message):
    with pytest.raises(UploadError, match=message):
        read_upload(files, SETTINGS)


def test_mixed_scans_are_refused(cohort):
    series = _series_dirs(cohort)[0]
    nii = sorted((cohort / "nifti").glob("*.nii.gz"))[0]
    with pytest.raises(UploadError, match="mixes DICOM and NIfTI"):
        read_upload([*_files(series), (nii.name, nii.read_bytes())], SETTINGS)


def test_zip_bombs_and_oversized_uploads_are_refused_without_expanding():
    bomb = _zip([("a.dcm", b"\x00" * (50 * 2**20))])  # 50 MiB of zeros: ~1000 to 1
    assert len(bomb) < 2**20
    with pytest.raises(UploadError, match="zip bomb"):
        read_upload([("bomb.zip", bomb)], SETTINGS)
    big = _zip([("a.dcm", np.random.default_rng(0).bytes(3 * 2**20))])
    with pytest.raises(UploadError, match="expands to more than 2 MiB"):
        read_upload([("big.zip", big)], SETTINGS, UploadLimits(max_total_bytes=2 * 2**20))


def test_gzip_bomb_nifti_is_refused():
    img = nib.Nifti1Image(np.zeros((256, 256, 64), np.float32), np.eye(4))
    data = gzip.compress(img.to_bytes())
    with pytest.raises(InputError, match="too large"):
        read_upload([("v.nii.gz", data)], SETTINGS, UploadLimits(max_volume_bytes=2**20))


def test_zip_member_names_are_never_paths_and_nested_zips_are_not_expanded(tmp_path, cohort):
    series = _series_dirs(cohort)[0]
    entries = [(f"../../escape/{name}", data) for name, data in _files(series)]
    entries.append(("inner.zip", _zip([("x.dcm", b"123")])))
    scan = read_upload([("evil.zip", _zip(entries))], SETTINGS)
    assert scan.slices.shape[0] > 0
    assert any("nested zip" in s for s in scan.skipped)
    assert not (tmp_path.parent / "escape").exists() and not Path("escape").exists()


def test_a_volume_without_lung_is_named_as_such():
    img = nib.Nifti1Image(np.full((32, 32, 8), 40.0, np.float32), np.eye(4))  # soft tissue only
    with pytest.raises(InputError, match="no slice contains lung"):
        read_upload([("abdomen.nii", img.to_bytes())], SETTINGS)
