"""Crash-safe training state: the plan, the step counter and the weights, each replaced whole."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from covidct import checkpoint
from covidct.checkpoint import LoopState, ResumeError
from covidct.runs import Run, create_run_dir


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    return create_run_dir(tmp_path, "r")


def test_the_plan_reads_back_with_infinity_and_a_foreign_file_is_refused(run: Path):
    checkpoint.write_plan(run, {"target_epsilon": math.inf, "noise_multiplier": 1.2})
    plan = checkpoint.read_plan(run)
    assert plan["target_epsilon"] == "inf" and plan["noise_multiplier"] == 1.2
    json.loads((run / Run.CHECKPOINTS / Run.PLAN).read_text(), parse_constant=pytest.fail)
    (run / Run.CHECKPOINTS / Run.PLAN).write_text('{"format": "something-else"}')
    with pytest.raises(ResumeError, match="format"):
        checkpoint.read_plan(run)
    with pytest.raises(ResumeError, match="cannot be resumed"):
        checkpoint.read_plan(run.parent / "nothing")


def test_steps_counted_starts_at_zero_and_records_the_total(run: Path):
    assert checkpoint.steps_counted(run) == 0
    checkpoint.count_step(run, 5)
    checkpoint.count_step(run, 6)
    assert checkpoint.steps_counted(run) == 6
    (run / Run.CHECKPOINTS / Run.PROGRESS).write_text("{")
    with pytest.raises(ResumeError, match="cannot read"):
        checkpoint.steps_counted(run)


def test_state_round_trips_weights_optimizer_best_average_and_counters(run: Path):
    assert checkpoint.load_state(run) is None  # killed before the first checkpoint
    rng = np.random.default_rng(0)
    w = [rng.normal(size=(3, 2)).astype(np.float32), np.arange(2.0)]
    loop = LoopState(next_step=7, history=[{"epoch": 1, "auc": 0.7}], best_auc=0.7, committed=9)
    checkpoint.save_state(run, weights=w, optimizer=[np.array(3)], best_weights=w, loop=loop, ema=w)
    saved = checkpoint.load_state(run)
    assert saved is not None and saved.loop == loop
    for got in (saved.weights, saved.best_weights, saved.ema):
        for a, b in zip(got, w, strict=True):
            np.testing.assert_array_equal(a, b)
    assert int(saved.optimizer[0]) == 3


def test_a_corrupt_state_file_is_a_resume_error_not_a_traceback(run: Path):
    (run / Run.CHECKPOINTS / Run.STATE).write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(ResumeError, match="unreadable"):
        checkpoint.load_state(run)
