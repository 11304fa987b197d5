"""Inference from a run folder: the probability of a scan is the one evaluation computed for the
same patient (prediction lives once), and runs that cannot serve say why."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from covidct.data.units import PrivacyUnit, SliceStore, load_units
from covidct.evaluate import predict
from covidct.inference import ModelLoadError, load_bundle, predict_scan
from covidct.runs import Run


def test_a_scans_probability_is_the_patient_score_evaluation_gives(runs: Path, prep: Path):
    bundle = load_bundle(runs / "eps3")
    assert bundle.epsilon == pytest.approx(Run(runs / "eps3").read(Run.REPORT_JSON)["epsilon"])
    units = load_units(prep, "test", PrivacyUnit.PATIENT)
    store = SliceStore(prep)
    ids, _, scores = predict(bundle.model, units, store).by_patient(bundle.patient_score)
    for i in (0, len(units) - 1):
        slices = np.stack([store.get(f, j) for f, j in units.slices[i]])
        scan = predict_scan(bundle, slices)
        assert scan.probability == pytest.approx(scores[ids.index(units.ids[i])], abs=1e-5)
        assert scan.positive == (scan.probability >= bundle.threshold)
    with pytest.raises(ValueError, match=r"expected \(n, 32, 32\)"):
        predict_scan(bundle, np.zeros((2, 16, 16), np.uint8))


def test_the_baseline_reads_as_not_private(runs: Path):
    baseline = next((runs / "sweep1" / "runs").glob("epsinf*"))
    assert load_bundle(baseline).epsilon == math.inf


def test_runs_that_cannot_serve_say_why(runs: Path, tmp_path: Path):
    with pytest.raises(ModelLoadError, match="not a finished run"):
        load_bundle(tmp_path)
    copy = tmp_path / "old"
    shutil.copytree(runs / "eps3", copy)
    meta = json.loads((copy / Run.META).read_text())
    del meta["slice_settings"]
    meta["prep"] = str(tmp_path / "gone")
    (copy / Run.META).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="prepared data is gone"):
        load_bundle(copy)
    (copy / Run.METRICS).write_text("{")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_bundle(copy)
