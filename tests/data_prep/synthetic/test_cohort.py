"""The synthetic cohort: reproducible, exact on read-back, and not separable by a HU threshold."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_rescale

from data_prep.errors import ConfigError, CovidCTError
from data_prep.synthetic.cohort import (
    CohortFormat,
    Identity,
    SynthConfig,
    make_identities,
    patient_rng,
    write_cohort,
    write_dicom_series,
    write_nifti,
)
from data_prep.synthetic.phantom import Phantom, make_phantom

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _tiny(**settings: Any) -> SynthConfig:
    """A cohort small enough for unit tests: 6 slices of 32 x 32."""
    return SynthConfig(**{"n_slices": 6, "matrix": 32, **settings})


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _read_series(folder: Path) -> list[pydicom.Dataset]:
    """All files of a series folder, in slice order (by position, never by name)."""
    datasets = [pydicom.dcmread(p) for p in folder.iterdir()]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


@pytest.fixture(scope="module")
def identity() -> Identity:
    return make_identities(3, 1)[0]


@pytest.fixture(scope="module")
def mild() -> Phantom:
    return make_phantom(patient_rng(11, 0), n_slices=8, matrix=48, positive=True, burden="mild")


# --- reproducibility ---------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_uids_and_other_seed_differs(tmp_path):
    cfg = _tiny(n_patients=3, seed=5, workers=1)
    write_cohort(tmp_path / "a", cfg)
    write_cohort(tmp_path / "b", cfg)
    write_cohort(tmp_path / "c", _tiny(n_patients=3, seed=6, workers=1))
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b  # file names carry the UIDs, so equal names mean equal UIDs
    dicom_a = {k: v for k, v in a.items() if k.startswith("dicom/")}
    dicom_c = {k: v for k, v in c.items() if k.startswith("dicom/")}
    assert dicom_a and dicom_c and not set(dicom_a) & set(dicom_c)
    assert not set(dicom_a.values()) & set(dicom_c.values())
    assert a["labels.csv"] != c["labels.csv"]  # other patient ids


def test_worker_count_does_not_change_output(tmp_path):
    cfg = _tiny(n_patients=4, seed=2, workers=1)
    write_cohort(tmp_path / "one", cfg)
    write_cohort(tmp_path / "two", _tiny(n_patients=4, seed=2, workers=2))
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


# --- DICOM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("intercept", [0, -1024])
def test_dicom_rescale_gives_exactly_the_phantom_hu_with_required_tags(
    tmp_path, mild, identity, intercept
):
    paths = write_dicom_series(mild, tmp_path / "s", identity=identity, rescale_intercept=intercept)
    assert len(paths) == mild.hu.shape[0] and all(p.suffix == ".dcm" for p in paths)
    series = _read_series(tmp_path / "s")
    for k, ds in enumerate(series):
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == CT_IMAGE_STORAGE and ds.Modality == "CT"
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            16,
            16,
            15,
            1,
        )
        assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1, "MONOCHROME2")
        assert (ds.Rows, ds.Columns) == mild.hu.shape[1:]
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, intercept)
        assert ds.RescaleType == "HU" and "WindowCenter" in ds and "WindowWidth" in ds
        assert ds.InstanceNumber == k + 1
        assert ds.pixel_array.dtype == np.int16
        hu = apply_rescale(ds.pixel_array, ds)
        np.testing.assert_array_equal(hu, mild.hu[k])
        np.testing.assert_array_equal(ds.pixel_array * 1 + intercept, mild.hu[k])
    assert len({ds.SOPInstanceUID for ds in series}) == len(series)
    assert len({ds.SeriesInstanceUID for ds in series}) == 1


def test_dicom_geometry_matches_phantom_affine(tmp_path, mild, identity):
    write_dicom_series(mild, tmp_path / "s", identity=identity)
    dz, dy, dx = mild.spacing
    for k, ds in enumerate(_read_series(tmp_path / "s")):
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [dy, dx]
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == dz
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        # Exact: the geometry lies on a grid that decimal strings and float32 represent exactly.
        assert np.array_equal(ipp, (mild.affine @ np.array([k, 0, 0, 1.0]))[:3])
        assert float(ds.SliceLocation) == ipp[2]
        # Pixel (row r, column c) sits at IPP + c * dx along +x (Left) + r * dy along +y (Post.).
        r, c = 3, 5
        world = ipp + np.array([c * dx, r * dy, 0.0])
        np.testing.assert_array_equal(world, (mild.affine @ np.array([k, r, c, 1.0]))[:3])


def test_dicom_files_are_named_out_of_slice_order_and_carry_the_identity(tmp_path, mild, identity):
    write_dicom_series(mild, tmp_path / "s", identity=identity)
    by_name = [pydicom.dcmread(p) for p in sorted((tmp_path / "s").iterdir())]
    assert [ds.InstanceNumber for ds in by_name] != sorted(ds.InstanceNumber for ds in by_name)
    ds = by_name[0]
    assert str(ds.PatientName) == identity.patient_name
    assert ds.PatientID == identity.patient_id and identity.patient_id.startswith("MRN")
    assert len(identity.patient_id) == 10 and identity.patient_id[3:].isdigit()
    for keyword, value in [
        ("PatientBirthDate", identity.birth_date),
        ("PatientSex", identity.sex),
        ("AccessionNumber", identity.accession_number),
        ("InstitutionName", identity.institution_name),
        ("InstitutionAddress", identity.institution_address),
        ("ReferringPhysicianName", identity.referring_physician),
        ("OperatorsName", identity.operators_name),
        ("StudyDate", identity.study_date),
        ("SeriesDate", identity.study_date),
        ("StudyTime", identity.study_time),
        ("StudyID", identity.study_id),
        ("StationName", identity.station_name),
        ("StudyInstanceUID", identity.study_instance_uid),
    ]:
        assert str(ds[keyword].value) == value, keyword


def test_extensionless_files_and_localizer_in_its_own_series_folder(tmp_path, mild, identity):
    paths = write_dicom_series(
        mild, tmp_path / "ax", identity=identity, with_extension=False, add_localizer=True
    )
    assert all(p.suffix == "" for p in paths)
    loc_path = paths[-1]
    assert loc_path.parent == tmp_path / "ax_localizer"
    assert len(list(loc_path.parent.iterdir())) == 1
    loc = pydicom.dcmread(loc_path)
    axial = pydicom.dcmread(paths[0])
    assert list(loc.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert [float(v) for v in loc.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]  # coronal
    assert loc.StudyInstanceUID == axial.StudyInstanceUID
    assert loc.SeriesInstanceUID != axial.SeriesInstanceUID
    assert loc.FrameOfReferenceUID == axial.FrameOfReferenceUID


def test_simpleitk_reads_the_dicom_series_as_the_phantom(tmp_path, mild, identity):
    sitk = pytest.importorskip("SimpleITK")
    write_dicom_series(mild, tmp_path / "s", identity=identity, rescale_intercept=-1024)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    img = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), mild.hu)  # (z, y, x)
    np.testing.assert_allclose(img.GetOrigin(), mild.origin, atol=1e-4)
    np.testing.assert_allclose(img.GetSpacing(), mild.spacing[::-1], atol=1e-4)
    np.testing.assert_allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-6)


# --- NIfTI -------------------------------------------------------------------------------------


def test_nifti_gives_the_same_values_and_world_position_for_every_voxel(tmp_path, mild, identity):
    path = write_nifti(mild, tmp_path / "p.nii.gz")
    img = nib.load(path)
    assert img.header.get_data_dtype() == np.int16
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_array_equal(img.get_qform(), img.get_sform())
    data = np.asarray(img.dataobj)
    assert data.dtype == np.int16
    np.testing.assert_array_equal(data, mild.hu.transpose(2, 1, 0))  # stored as (x, y, z)
    # World position of every voxel: NIfTI (RAS -> LPS) against the DICOM geometry.
    nz, ny, nx = mild.hu.shape
    k, r, c = (a.ravel() for a in np.meshgrid(range(nz), range(ny), range(nx), indexing="ij"))
    ijk = np.stack([c, r, k, np.ones_like(k)]).astype(float)
    lps = (np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine @ ijk)[:3]
    write_dicom_series(mild, tmp_path / "s", identity=identity)
    ipp = np.array(
        [[float(v) for v in ds.ImagePositionPatient] for ds in _read_series(tmp_path / "s")]
    )
    dicom = ipp[k].T + np.stack([c * mild.spacing[2], r * mild.spacing[1], 0 * k])
    np.testing.assert_array_equal(lps, dicom)


def test_nifti_bytes_are_reproducible(tmp_path, mild):
    a = write_nifti(mild, tmp_path / "a.nii.gz").read_bytes()
    b = write_nifti(mild, tmp_path / "b.nii.gz").read_bytes()
    assert a == b  # no time stamp in the gzip header


# --- the cohort --------------------------------------------------------------------------------


def test_cohort_files_labels_and_truth_agree_with_the_phantoms(tmp_path):
    cfg = _tiny(n_patients=6, seed=4, workers=1)
    summary = write_cohort(tmp_path, cfg)
    labels = list(csv.DictReader((tmp_path / "labels.csv").open()))
    truth = list(csv.DictReader((tmp_path / "truth.csv").open()))
    ids = json.loads((tmp_path / "identities.json").read_text())
    assert [r["patient_id"] for r in labels] == [i["patient_id"] for i in ids]
    assert [i.patient_id for i in summary.identities] == [i["patient_id"] for i in ids]
    assert len(truth) == cfg.n_patients * cfg.n_slices
    assert summary.n_positive == sum(r["label"] == "1" for r in labels) == 3
    assert (summary.n_dicom, summary.n_nifti) == (4, 2)  # MIXED: i % 3 == 2 is NIfTI
    for i, row in enumerate(labels):
        pid = row["patient_id"]
        rows = [t for t in truth if t["patient_id"] == pid]
        burden = rows[0]["burden"]
        assert (burden != "none") == (row["label"] == "1")
        ph = make_phantom(
            patient_rng(cfg.seed, i),
            n_slices=cfg.n_slices,
            matrix=cfg.matrix,
            positive=row["label"] == "1",
            burden=burden,
        )
        assert [int(t["slice_index"]) for t in rows] == list(range(cfg.n_slices))
        assert [t["lesion"] == "1" for t in rows] == list(ph.lesion_slices)
        if i % 3 == 2:
            img = nib.load(tmp_path / "nifti" / f"{pid}.nii.gz")
            np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), ph.hu)
            assert not (tmp_path / "dicom" / pid).exists()
        else:
            (axial,) = [
                p for p in (tmp_path / "dicom" / pid).glob("*/*") if "localizer" not in p.name
            ]
            series = _read_series(axial)
            assert all(ds.PatientID == pid for ds in series)
            np.testing.assert_array_equal(
                np.stack([apply_rescale(ds.pixel_array, ds) for ds in series]), ph.hu
            )


def test_cohort_spreads_dicom_variants(tmp_path):
    write_cohort(tmp_path, _tiny(n_patients=6, seed=1, workers=1))
    files = [p for p in (tmp_path / "dicom").rglob("*") if p.is_file()]
    intercepts = {pydicom.dcmread(p, stop_before_pixels=True).RescaleIntercept for p in files}
    assert {float(v) for v in intercepts} == {0.0, -1024.0}
    assert any(p.suffix == "" for p in files) and any(p.suffix == ".dcm" for p in files)
    assert any(p.parent.name.endswith("_localizer") for p in files)
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files


def test_rerun_replaces_an_earlier_cohort_and_foreign_folders_are_refused(tmp_path):
    write_cohort(tmp_path / "c", _tiny(n_patients=5, seed=1, workers=1))
    write_cohort(tmp_path / "c", _tiny(n_patients=3, seed=2, workers=1))
    ids = {i["patient_id"] for i in json.loads((tmp_path / "c" / "identities.json").read_text())}
    on_disk = {p.name for p in (tmp_path / "c" / "dicom").iterdir()}
    on_disk |= {p.name.removesuffix(".nii.gz") for p in (tmp_path / "c" / "nifti").iterdir()}
    assert on_disk == ids
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "scan.dcm").write_bytes(b"x")
    with pytest.raises(CovidCTError, match="not empty"):
        write_cohort(tmp_path / "other", _tiny(n_patients=1))


@pytest.mark.parametrize(
    "bad", [{"n_patients": 0}, {"matrix": 4}, {"positive_fraction": 1.5}, {"workers": -1}]
)
def test_invalid_settings_raise_config_error(tmp_path, bad):
    with pytest.raises(ConfigError):
        write_cohort(tmp_path, _tiny(**bad))


def test_identities_are_unique_and_realistic():
    ids = make_identities(0, 300)
    assert len({i.patient_id for i in ids}) == 300
    assert len({i.accession_number for i in ids}) == 300
    assert len({i.study_instance_uid for i in ids}) == 300
    for i in ids[:20]:
        assert i.patient_name.count("^") == 2 and i.sex in ("F", "M")
        assert len(i.birth_date) == len(i.study_date) == 8 and i.birth_date < i.study_date
        assert len(i.station_name) <= 16 and len(i.accession_number) <= 16
    assert make_identities(0, 5) == ids[:5]


def test_formats_setting_selects_the_file_format(tmp_path):
    write_cohort(tmp_path / "n", _tiny(n_patients=2, workers=1, formats=CohortFormat.NIFTI))
    assert len(list((tmp_path / "n" / "nifti").iterdir())) == 2
    assert not (tmp_path / "n" / "dicom").exists()


# --- anatomy -----------------------------------------------------------------------------------
