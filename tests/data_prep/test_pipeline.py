"""prepare() end to end on the synthetic cohort: completeness, de-identification, splits, resume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_prep.deid import Pseudonymizer, load_or_create_key
from data_prep.manifest import read_manifest
from data_prep.pipeline import PrepConfig, PrepFolderError, prepare
from data_prep.worker import SliceSettings
from tests.identity import identity_leaks

CONFIG = PrepConfig(slices=SliceSettings(image_size=32), workers=1)


def _labels(cohort: Path) -> dict[str, int]:
    with (cohort / "labels.csv").open() as fh:
        return {r["patient_id"]: int(r["label"]) for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def prepared(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "prep"
    prepare([cohort], out, config=CONFIG, labels=[cohort / "labels.csv"])
    return out


def test_every_patient_is_prepared_with_its_label(cohort, prepared):
    labels = _labels(cohort)
    ps = Pseudonymizer(load_or_create_key(prepared / "private"))
    rows = read_manifest(prepared / "manifest.csv")
    got = {r.patient_id: r.label for r in rows}
    assert got == {ps.patient(pid): lab for pid, lab in labels.items()}
    for r in rows:
        arr = np.load(prepared / r.file, mmap_mode="r")
        assert arr.dtype == np.uint8 and arr.shape[1:] == (32, 32)
        assert 0 <= r.index < arr.shape[0]
        assert r.kind == "hu"


def test_no_patient_appears_in_two_splits(prepared):
    rows = read_manifest(prepared / "manifest.csv")
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {next(iter(s)) for s in splits.values()} == {"train", "validation", "test"}


def test_slices_run_feet_to_head_within_a_volume(prepared):
    rows = read_manifest(prepared / "manifest.csv")
    by_vol: dict[str, list[float]] = {}
    for r in rows:
        by_vol.setdefault(r.volume_id, []).append(r.position_mm)
    for positions in by_vol.values():
        assert positions == sorted(positions)


def _public_files(prep: Path) -> list[Path]:
    return [
        p for p in prep.rglob("*") if p.is_file() and "private" not in p.relative_to(prep).parts
    ]


def test_no_identifying_value_or_source_path_outside_private(cohort, prepared, identities):
    for path in _public_files(prepared):
        data = path.read_bytes()
        if path.suffix == ".npy":
            data = data[:128]  # pixel bytes are image data; the header is the only text
        leaks = identity_leaks(data.decode("latin-1"), identities, (str(cohort), cohort.name))
        assert not leaks, f"{leaks} found in {path.relative_to(prepared)}"
    # ...and the private folder does hold the mapping back, for the hospital's own use
    private = (prepared / "private" / "pseudonym_map.csv").read_text()
    assert identities[0]["patient_id"] in private


def test_rerun_over_same_inputs_is_idempotent(cohort, prepared, tmp_path):
    copy = tmp_path / "prep"
    shutil.copytree(prepared, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in _public_files(copy)}
    res = prepare([cohort], copy, config=CONFIG, labels=[cohort / "labels.csv"])
    assert res.processed == 0 and res.reused > 0
    after = {p.relative_to(copy): p.read_bytes() for p in _public_files(copy)}
    assert set(after) == set(before)
    for rel, data in before.items():
        if rel.name != "prep_report.json":
            assert after[rel] == data, rel


def test_interrupted_then_resumed_run_equals_uninterrupted(cohort, prepared, tmp_path):
    out = tmp_path / "prep"
    (out / "private").mkdir(parents=True)
    shutil.copy(prepared / "private" / "pseudonym.key", out / "private" / "pseudonym.key")

    def interrupt(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare([cohort], out, config=CONFIG, labels=[cohort / "labels.csv"], on_job_done=interrupt)
    assert len(list((out / "slices").glob("*.npy"))) == 3  # finished work was kept
    res = prepare([cohort], out, config=CONFIG, labels=[cohort / "labels.csv"])
    assert res.reused == 3
    for rel in ["manifest.csv", "dataset.json"]:
        assert (out / rel).read_bytes() == (prepared / rel).read_bytes()
    for npy in (prepared / "slices").glob("*.npy"):
        assert (out / "slices" / npy.name).read_bytes() == npy.read_bytes()
    a = json.loads((out / "prep_report.json").read_text())
    b = json.loads((prepared / "prep_report.json").read_text())
    for report in (a, b):
        for k in ("jobs_reused", "jobs_processed"):
            report["counts"].pop(k)
    assert a == b


def test_two_workers_give_the_same_dataset_as_one(cohort, prepared, tmp_path):
    out = tmp_path / "prep"
    (out / "private").mkdir(parents=True)
    shutil.copy(prepared / "private" / "pseudonym.key", out / "private" / "pseudonym.key")
    cfg = PrepConfig(slices=SliceSettings(image_size=32), workers=2)
    prepare([cohort], out, config=cfg, labels=[cohort / "labels.csv"])
    assert (out / "manifest.csv").read_bytes() == (prepared / "manifest.csv").read_bytes()


def test_changed_slice_settings_are_refused(cohort, prepared, tmp_path):
    copy = tmp_path / "prep"
    shutil.copytree(prepared, copy)
    cfg = PrepConfig(slices=SliceSettings(image_size=48), workers=1)
    with pytest.raises(PrepFolderError, match="new --out folder"):
        prepare([cohort], copy, config=cfg)


def test_a_folder_from_before_the_lung_views_is_still_reused(cohort, prepared, tmp_path):
    copy = tmp_path / "prep"
    shutil.copytree(prepared, copy)
    meta = json.loads((copy / "dataset.json").read_text())
    for key in ("crop", "mask_outside_lungs"):  # what older versions wrote
        del meta["slices"][key]
    (copy / "dataset.json").write_text(json.dumps(meta))
    # such a folder was made unmasked and uncropped, whatever today's defaults are
    unmasked = PrepConfig(slices=SliceSettings(image_size=32, mask_outside_lungs=False), workers=1)
    result = prepare([cohort], copy, config=unmasked, labels=[cohort / "labels.csv"])
    assert result.n_volumes > 0
    assert CONFIG.slices.mask_outside_lungs  # today's default
    with pytest.raises(PrepFolderError, match="new --out folder"):
        prepare([cohort], copy, config=CONFIG)


def test_localizer_series_are_skipped_with_a_reason(prepared):
    report = json.loads((prepared / "prep_report.json").read_text())
    assert any("localizer" in s["reason"] for s in report["skipped"])


def test_the_manifest_says_how_each_patient_was_identified(cohort, prepared, tmp_path):
    """A PatientID names a person; a NIfTI file name or a study without PatientID only stands
    for one. Training's report counts these fallbacks from the manifest."""
    import pydicom

    rows = read_manifest(prepared / "manifest.csv")
    assert {r.unit_basis for r in rows} == {"dicom_patient_id", "nifti_file"}
    # one DICOM series with its PatientID blanked: the study becomes its own unit
    series = sorted((cohort / "dicom").glob("*/*/*_chest_axial"))[0]
    copy = tmp_path / "anon" / "COVID" / "series"  # labelled by its class folder
    shutil.copytree(series, copy)
    for f in (p for p in copy.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(f)
        ds.PatientID = ""
        ds.save_as(f)
    out = tmp_path / "prep_anon"
    prepare([tmp_path / "anon"], out, config=CONFIG)
    assert {r.unit_basis for r in read_manifest(out / "manifest.csv")} == {"dicom_study"}


def test_recorded_settings_from_before_a_setting_existed_take_its_old_value():
    """A run or folder recorded before crop and masking existed was made uncropped and
    unmasked; dashboard uploads to its model must be prepared that way, not by today's
    defaults."""
    recorded = SliceSettings(image_size=64).as_dict()
    del recorded["crop"], recorded["mask_outside_lungs"]
    old = SliceSettings.from_recorded(recorded)
    assert old.image_size == 64 and old.crop == "none" and not old.mask_outside_lungs
    assert SliceSettings().mask_outside_lungs  # today's default differs
    assert SliceSettings.from_recorded(SliceSettings().as_dict()) == SliceSettings()
