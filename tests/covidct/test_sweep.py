"""covidct sweep: a grid of tiny trainings, its curves, plots and report; resumable."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from covidct.cli import main
from covidct.privacy.secret import RunSecret
from covidct.sweep import CURVE_COLUMNS, SweepError, parse_epsilons

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = [
    "--set",
    "train.epochs=1",
    "--set",
    "train.max_slices_per_unit=2",
    "--set",
    "train.chunk_units=8",
]


def _sweep(prep: Path, out: Path, epsilons: str) -> int:
    return main(
        [
            "sweep",
            "--data",
            str(prep),
            "--epsilons",
            epsilons,
            "--batch-sizes",
            "8",
            "--out",
            str(out),
            "--no-progress",
            *TINY,
        ]
    )


def test_sweep_writes_curves_plots_and_report_and_resumes(prep, tmp_path, capsys, monkeypatch):
    keys: list[bytes] = []
    real = RunSecret.draw.__func__  # type: ignore[attr-defined]

    def draw(cls):
        s = real(cls)
        keys.append(s._key)
        return s

    monkeypatch.setattr(RunSecret, "draw", classmethod(draw))
    out = tmp_path / "sweep"
    assert _sweep(prep, out, "2,inf") == 0
    assert len(keys) == 2 and len(set(keys)) == 2  # every point its own secret key
    with (out / "curves.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CURVE_COLUMNS
    assert [r["run_id"] for r in rows] == ["eps2_b8_s0", "epsinf_b8_s0"]
    private, baseline = rows
    assert float(private["epsilon_achieved"]) <= 2.0 + 1e-9
    assert float(private["noise_multiplier"]) > 0
    assert baseline["epsilon_achieved"] == "inf" and float(baseline["noise_multiplier"]) == 0
    for r in rows:
        for level in ("slice", "patient"):
            for m in ("auc", "accuracy", "sensitivity", "specificity"):
                assert 0.0 <= float(r[f"{level}_{m}"]) <= 1.0, (level, m)
        assert 0.0 <= float(r["attack_auc"]) <= 1.0
        assert r["batch_size"] == "8" and r["seed"] == "0"
    for name in ("utility_vs_epsilon.png", "utility_vs_batch_size.png", "epsilon_vs_epoch.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name
    report = (out / "sweep_report.md").read_text()
    assert "privacy cost that no single run's epsilon" in report
    assert "validation" in report and "test split is reported only" in report

    # a re-run skips finished points: their run folders are not touched
    stamp = (out / "runs" / "eps2_b8_s0" / "run.json").stat().st_mtime_ns
    capsys.readouterr()
    assert _sweep(prep, out, "2,inf") == 0
    err = capsys.readouterr().err
    assert err.count("already finished") == 2 and "training" not in err
    assert (out / "runs" / "eps2_b8_s0" / "run.json").stat().st_mtime_ns == stamp


def test_interrupted_point_is_resumed_and_other_grids_are_refused(prep, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert _sweep(prep, out, "inf") == 0
    run = out / "runs" / "epsinf_b8_s0"
    steps = json.loads((run / "run.json").read_text())["steps"]
    (run / "run.json").unlink()  # as if killed while writing its last files
    capsys.readouterr()
    assert _sweep(prep, out, "inf") == 0
    assert "resuming epsinf_b8_s0" in capsys.readouterr().err
    meta = json.loads((run / "run.json").read_text())
    assert meta["steps"] == steps and meta["attempts"] == 2  # finished, not trained again

    assert _sweep(prep, out, "3,inf") == 2  # a different grid in the same folder
    assert "other settings" in capsys.readouterr().err


def test_bad_epsilon_lists_are_clear_errors():
    assert parse_epsilons("inf, 1,3") == [1.0, 3.0, math.inf]
    with pytest.raises(SweepError, match="not a number"):
        parse_epsilons("1,three")
    with pytest.raises(SweepError, match="> 0"):
        parse_epsilons("0,1")
