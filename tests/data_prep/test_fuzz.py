"""Fuzzed inputs: copies of good DICOM series and NIfTI volumes with one file broken in a seeded
way (tests/data_prep/mutate.py) go through one `prepare` run. No traceback; every case is either
prepared or reported with a reason; every intact control is prepared. The dashboard's upload
reader gets the same files and answers each with a message, never an exception."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from data_prep.pipeline import PrepConfig, prepare
from data_prep.worker import SliceSettings
from tests.data_prep.mutate import Case, labels_csv, make_cases

N_CASES = 300


def _sources(cohort: Path) -> tuple[list[list[Path]], list[Path]]:
    dirs = [d for d in sorted((cohort / "dicom").rglob("*_axial")) if d.is_dir()]
    series = [sorted(p for p in d.iterdir() if p.is_file()) for d in dirs]
    series = [files for files in series if files]
    series.append([Path(get_testdata_file("CT_small.dcm", download=False))])  # pydicom's own
    import nibabel.testing

    volumes = sorted((cohort / "nifti").glob("*.nii.gz"))
    volumes.append(Path(nibabel.testing.data_path) / "example4d.nii.gz")  # nibabel's own
    return series, volumes


@pytest.fixture(scope="module")
def fuzzed(cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fuzz")
    series, volumes = _sources(cohort)
    cases = make_cases(series, volumes, root / "in", n_cases=N_CASES, seed=1)
    labels = labels_csv(cases, root / "labels.csv")
    result = prepare(
        [root / "in"],
        root / "prep",
        config=PrepConfig(slices=SliceSettings(image_size=32), workers=2, job_timeout_s=120),
        labels=[labels],
    )
    return cases, result, root / "prep", cohort


def _prepared_patients(prep: Path) -> set[str]:
    with (prep / "private" / "pseudonym_map.csv").open(newline="") as f:
        return {r["source_patient_id"] for r in csv.DictReader(f)}


def _reported(result, case: Case) -> list[str]:
    return [p.reason for p in [*result.skipped, *result.flagged] if str(case.path) in str(p.path)]


def test_every_case_is_prepared_or_reported_and_controls_are_prepared(fuzzed):
    cases, result, prep, cohort = fuzzed
    prepared = _prepared_patients(prep)
    unaccounted = [c for c in cases if c.patient not in prepared and not _reported(result, c)]
    assert not unaccounted, [(c.mutation, str(c.path)) for c in unaccounted]
    # an intact copy of a cohort scan is prepared (pydicom's one-slice CT_small and nibabel's
    # 4D brain are not chest CTs: they are reported, which the line above checked)
    controls = [c for c in cases if c.mutation == "control" and c.source.is_relative_to(cohort)]
    assert controls and all(c.patient in prepared for c in controls)
    kinds = {c.mutation.split("@")[0].split("=")[0] for c in cases}
    assert len(kinds) >= 12  # the mutations really vary
    report = json.loads((prep / "prep_report.json").read_text())
    reasons = [r["reason"] for r in report.get("skipped", []) + report.get("flagged", [])]
    assert all("\n" not in r and "Traceback" not in r for r in reasons)


def test_no_contradicting_slice_is_used_silently(fuzzed):
    """A case whose one mutated file carries a zero/NaN/infinite slope is never prepared from
    that file without a flag: either its series is reported, or it names the dropped slice."""
    cases, result, prep, _ = fuzzed
    prepared = _prepared_patients(prep)
    unusable = {"slope=0", "slope=-0", "slope=nan", "slope=inf"}
    slopes = [c for c in cases if c.mutation in unusable and c.patient in prepared]
    assert slopes  # the seed draws some
    for case in slopes:
        assert any("RescaleSlope" in r or "decoded" in r for r in _reported(result, case)), case


def test_the_upload_reader_answers_every_mutated_file_with_a_message(fuzzed):
    from data_prep.errors import InputError
    from data_prep.uploads import read_upload

    cases, _, _, _ = fuzzed
    for case in cases[:60]:
        files = (
            [(p.name, p.read_bytes()) for p in sorted(case.path.iterdir())]
            if case.path.is_dir()
            else [(case.path.name, case.path.read_bytes())]
        )
        try:
            read_upload(files, SliceSettings(image_size=32))
        except InputError as exc:
            assert str(exc) and "\n" not in str(exc)
