"""What the pages show comes from these services: the runs table, the curves, one upload's
prediction (the page tests drive them through Streamlit in test_views.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from app import services
from covidct.inference import load_bundle
from covidct.runs import Run
from data_prep.errors import InputError
from tests.app.conftest import nifti_upload


def test_runs_table_has_one_row_per_finished_run_with_its_numbers(runs: Path):
    found = services.find_runs(runs)
    assert {p.relative_to(runs).as_posix() for p in found} >= {"eps3"}
    rows = {r["run"]: r for r in services.runs_table(found, runs)}
    eps3 = rows["eps3"]
    report = Run(runs / "eps3").read(Run.REPORT_JSON)
    assert eps3["epsilon"] == pytest.approx(report["epsilon"]) and eps3["target epsilon"] == 3.0
    baseline = next(r for name, r in rows.items() if "epsinf" in name)
    assert baseline["epsilon"] == math.inf


def test_curves_hold_the_sweeps_points_and_the_single_runs(runs: Path):
    rows = services.curves_rows(runs)
    by_sweep = {(r["sweep"], r["run"]): r for r in rows}
    assert ("(single runs)", "eps3") in by_sweep
    sweep = [r for r in rows if r["sweep"] == "sweep1"]
    assert sorted(r["private"] for r in sweep) == [False, True]
    private = next(r for r in sweep if r["private"])
    assert private["epsilon_target"] == 2.0 and private["epsilon_per_epoch"]


def test_an_upload_is_predicted_with_the_models_own_slice_settings(runs: Path, cohort: Path):
    bundle = load_bundle(runs / "eps3")
    result = services.predict_upload(bundle, [nifti_upload(cohort)])
    assert result.scan.slices.shape[1:] == (32, 32) and result.n_slices > 0
    assert 0.0 <= result.prediction.probability <= 1.0 and result.notes == []
    overlay = services.heat_overlay(bundle, result, 0)
    assert overlay.dtype.name == "uint8" and overlay.shape[-1] == 3
    assert services.heat_map_kind(bundle).startswith("Per-region")  # the default model
    with pytest.raises(InputError):
        services.predict_upload(bundle, [("notes.txt", b"hello")])
