"""Slice-image datasets laid out like COVID-CT and SARS-CoV-2 CT-scan (class folders of PNG/JPG)."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.manifest import read_manifest
from data_prep.pipeline import PrepConfig, prepare
from data_prep.worker import SliceSettings

CONFIG = PrepConfig(slices=SliceSettings(image_size=32), workers=1)


def _png(path: Path, seed: int, size=(80, 70), mode="L") -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode="L")
    (img.convert(mode) if mode != "L" else img).save(path)


def test_covid_ct_layout_images_are_labelled_from_folders_and_marked_8bit(tmp_path):
    root = tmp_path / "COVID-CT"
    for i in range(6):
        _png(root / "CT_COVID" / f"2020.03.{i}-p{i}-1.png", i)
        _png(root / "CT_NonCOVID" / f"{i}.jpg", 100 + i, mode="RGB")
    res = prepare([root], tmp_path / "prep", config=CONFIG)
    rows = read_manifest(tmp_path / "prep" / "manifest.csv")
    assert len(rows) == 12
    assert {r.kind for r in rows} == {"gray8"}
    assert sum(r.label for r in rows) == 6
    arr = np.load(tmp_path / "prep" / rows[0].file)
    assert arr.dtype == np.uint8 and arr.shape[1:] == (32, 32)
    # no patient ids in these sets: the report says each image is its own patient, and the
    # manifest carries it to training (whose report says the guarantee covers an image)
    assert any("no patient grouping" in p.reason for p in res.skipped)
    assert {r.unit_basis for r in rows} == {"single_image"}


def test_one_folder_per_patient_keeps_a_patients_slices_together(tmp_path):
    root = tmp_path / "sars"
    for p in range(8):
        cls = "COVID" if p % 2 else "non-COVID"
        for s in range(3):
            _png(root / cls / f"patient{p}" / f"slice{s}.png", p * 10 + s)
    prepare([root], tmp_path / "prep", config=CONFIG)
    rows = read_manifest(tmp_path / "prep" / "manifest.csv")
    per_patient: dict[str, set[str]] = {}
    for r in rows:
        per_patient.setdefault(r.patient_id, set()).add(r.split)
    assert len(per_patient) == 8
    assert all(len(s) == 1 for s in per_patient.values())
    assert all(sum(1 for r in rows if r.patient_id == p) == 3 for p in per_patient)
    assert {r.unit_basis for r in rows} == {"image_folder"}


def test_a_corrupt_image_is_skipped_and_the_rest_prepared(tmp_path):
    root = tmp_path / "COVID-CT"
    for i in range(3):
        _png(root / "CT_COVID" / f"{i}.png", i)
    bad = root / "CT_COVID" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    res = prepare([root], tmp_path / "prep", config=CONFIG)
    assert res.n_slices == 3
    broken = [p for p in res.skipped if p.path == str(bad)]
    assert broken and "cannot decode image" in broken[0].reason
    report = json.loads((tmp_path / "prep" / "prep_report.json").read_text())
    assert str(bad) not in json.dumps(report)  # paths never enter the report
    assert any("cannot decode image" in s["reason"] for s in report["skipped"])


def test_image_patient_regex_groups_files_by_patient(tmp_path):
    root = tmp_path / "imgs"
    for p in range(4):
        for s in range(2):
            _png(root / "COVID" / f"pt{p}_slice{s}.png", p * 7 + s)
    cfg = PrepConfig(
        slices=SliceSettings(image_size=32), workers=1, image_patient_regex=r"^(pt\d+)_"
    )
    res = prepare([root], tmp_path / "prep", config=cfg)
    assert res.n_patients == 4 and res.n_slices == 8
    rows = read_manifest(tmp_path / "prep" / "manifest.csv")
    assert {r.unit_basis for r in rows} == {"image_pattern"}
