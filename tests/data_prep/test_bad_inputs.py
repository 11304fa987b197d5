"""Each kind of bad input gets a one-line reason; the rest of the run goes on."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless

from covidct.cli import main
from data_prep.pipeline import PrepConfig, prepare
from data_prep.worker import SliceSettings

CONFIG = PrepConfig(slices=SliceSettings(image_size=32), workers=1)


@pytest.fixture(scope="module")
def messy(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The cohort plus one of every kind of bad input, and the paths of the bad ones."""
    root = tmp_path_factory.mktemp("messy")
    shutil.copytree(cohort, root / "cohort")
    bad: dict[str, Path] = {}
    dicom_patients = sorted((root / "cohort" / "dicom").iterdir())
    # a truncated slice inside a real series
    series_files = sorted(p for p in dicom_patients[0].rglob("*") if p.is_file())
    victim = max(series_files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    bad["truncated"] = victim
    # random bytes with a .dcm name
    bad["random"] = root / "junk" / "noise.dcm"
    bad["random"].parent.mkdir()
    bad["random"].write_bytes(os.urandom(4096))
    # an empty folder given as input
    bad["empty"] = root / "empty"
    bad["empty"].mkdir()
    # a .nii that is really gzipped: read, and flagged
    nifti = sorted((root / "cohort" / "nifti").glob("*.nii.gz"))[0]
    bad["gz_as_nii"] = nifti.with_name(nifti.name[: -len(".gz")])
    nifti.rename(bad["gz_as_nii"])
    # undecodable compressed pixels (JPEG 2000 with a destroyed image header)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.compress(JPEG2000Lossless)
    bad["j2k"] = root / "j2k" / "ct.dcm"
    bad["j2k"].parent.mkdir()
    ds.save_as(bad["j2k"])
    raw = bytearray(bad["j2k"].read_bytes())
    i = raw.find(b"\xff\x4f\xff\x51")
    raw[i + 4 : i + 40] = b"\x00" * 36
    bad["j2k"].write_bytes(bytes(raw))
    # a label file with an unknown patient and an invalid label
    labels = (root / "cohort" / "labels.csv").read_text().splitlines()
    labels += ["MRN0000000,1", labels[1].split(",")[0] + ",maybe"]
    bad["labels"] = root / "labels.csv"
    bad["labels"].write_text("\n".join(labels) + "\n")
    return bad


@pytest.fixture(scope="module")
def messy_result(messy: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("prep") / "prep"
    roots = [
        messy["truncated"].parents[3],
        messy["random"].parent,
        messy["empty"],
        messy["j2k"].parent,
    ]
    roots.append(messy["gz_as_nii"].parent)
    res = prepare(roots, out, config=CONFIG, labels=[messy["labels"]])
    report = json.loads((out / "prep_report.json").read_text())
    return res, report


def _reasons_for(res, path: Path) -> str:
    return " | ".join(p.reason for p in [*res.skipped, *res.flagged] if str(path) in p.path)


def test_the_rest_of_the_batch_is_prepared(messy_result, cohort):
    res, report = messy_result
    n_patients = len((cohort / "labels.csv").read_text().splitlines()) - 1
    assert res.n_patients == n_patients
    assert report["counts"]["patients"] == n_patients


def test_truncated_slice_is_reported(messy, messy_result):
    res, _ = messy_result
    text = _reasons_for(res, messy["truncated"]) + _reasons_for(res, messy["truncated"].parent)
    assert "unreadable DICOM header" in text or "could not be decoded" in text, text


def test_random_bytes_named_dcm_are_skipped(messy, messy_result):
    res, _ = messy_result
    assert "not a DICOM file" in _reasons_for(res, messy["random"])


def test_empty_folder_is_reported(messy, messy_result):
    res, _ = messy_result
    assert "empty" in _reasons_for(res, messy["empty"])


def test_gzipped_nii_is_read_and_flagged(messy, messy_result):
    res, _ = messy_result
    assert "gzip-compressed" in _reasons_for(res, messy["gz_as_nii"])


def test_undecodable_compressed_pixels_are_skipped(messy, messy_result):
    res, _ = messy_result
    assert "cannot be decoded" in _reasons_for(res, messy["j2k"])


def test_label_problems_are_reported_by_row_without_identifiers(messy_result):
    _, report = messy_result
    problems = " | ".join(report["label_problems"])
    assert "found in no prepared scan" in problems
    assert "is not one of" in problems
    assert "MRN" not in problems


def test_every_report_reason_is_one_line(messy_result):
    _, report = messy_result
    for entry in report["skipped"] + report["flagged"]:
        assert "\n" not in entry["reason"] and entry["reason"]


def test_cli_exit_code_is_2_when_nothing_usable(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(
        ["prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "prep"), "--workers", "1"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "nothing usable was prepared" in err and "empty" in err


def test_cli_strict_fails_on_any_skip_and_names_the_file(messy, tmp_path, capsys):
    code = main(
        [
            "prepare",
            str(messy["random"].parent),
            str(messy["gz_as_nii"].parent),
            "--strict",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "prep"),
            "--labels",
            str(messy["labels"]),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert str(messy["random"]) in err and "Traceback" not in err


def test_cli_label_file_missing_columns_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "l.csv"
    bad.write_text("a,b\n1,2\n")
    (tmp_path / "in").mkdir()
    code = main(
        ["prepare", str(tmp_path / "in"), "--out", str(tmp_path / "p"), "--labels", str(bad)]
    )
    assert code == 2
    assert "needs a 'label' column" in capsys.readouterr().err


def test_cli_counts_routine_series_skips_and_lists_them_with_verbose(cohort, tmp_path, capsys):
    args = ["prepare", str(cohort), "--workers", "1", "--labels", str(cohort / "labels.csv")]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "series: localizer (scout) series (--verbose lists them)" in err
    assert "_localizer:" not in err
    assert main([*args, "--out", str(tmp_path / "b"), "--verbose"]) == 0
    assert "_localizer: localizer (scout) series" in capsys.readouterr().err


def test_slices_whose_header_contradicts_their_series_are_dropped_and_flagged(cohort, tmp_path):
    """One slice with RescaleSlope 0 (it would be a blank slice), one with another pixel spacing
    and one claiming 65535 x 65535 pixels: each is dropped and flagged, never used silently."""
    patient = sorted((cohort / "dicom").iterdir())[0]
    series = tmp_path / "in" / patient.name
    shutil.copytree(patient, series)
    files = sorted(p for p in series.rglob("*") if p.is_file())
    edits = {
        files[2]: ("RescaleSlope", "0"),
        files[4]: ("PixelSpacing", ["0.5", "0.5"]),
        files[5]: ("Rows", 65535),
    }
    for path, (keyword, value) in edits.items():
        ds = pydicom.dcmread(path)
        setattr(ds, keyword, value)
        if keyword == "Rows":
            ds.Columns = 65535
        ds.save_as(path)
    res = prepare(
        [tmp_path / "in"], tmp_path / "prep", config=CONFIG, labels=[cohort / "labels.csv"]
    )
    assert res.n_patients == 1  # the rest of the series is prepared
    flags = " | ".join(p.reason for p in res.flagged)
    assert "1 slice(s) with an unusable RescaleSlope/Intercept (0.0) were dropped" in flags
    assert "1 slice(s) whose pixel spacing contradicts the rest of the series" in flags
    assert "65535x" in flags and "no CT slice is that large" in flags


def test_a_series_without_a_majority_geometry_is_refused():
    from data_prep.errors import InputError
    from data_prep.readers.dicom import DicomHeader, consistent_slices

    def header(i: int, rows: int, slope: float | None = 1.0) -> DicomHeader:
        return DicomHeader(
            path=f"f{i}",
            patient_id="",
            study_uid="",
            series_uid="s",
            modality="CT",
            sop_class="",
            image_type=(),
            orientation=(1, 0, 0, 0, 1, 0),
            position=(0.0, 0.0, float(i)),
            instance_number=i,
            rows=rows,
            columns=rows,
            frames=1,
            pixel_spacing=(0.7, 0.7),
            rescale_slope=slope,
            bits_allocated=16,
        )

    kept, flags = consistent_slices([header(0, 512), header(1, 512, float("nan")), header(2, 512)])
    assert [h.path for h in kept] == ["f0", "f2"] and "nan" in flags[0]
    with pytest.raises(InputError, match="no size is shared by most"):
        consistent_slices([header(0, 512), header(1, 256), header(2, 128), header(3, 512)])
