"""Crash-safe training: checkpoints, ``covidct train --resume RUN``, steps counted honestly."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from covidct import checkpoint
from covidct.cli import main
from covidct.privacy import accounting
from covidct.privacy.ledger import read_ledger
from covidct.privacy.plan import plan_privacy
from covidct.privacy.secret import RunSecret
from covidct.train import resume, train
from covidct.train_config import TrainConfig
from tests.covidct.keys import known_secret

CFG = TrainConfig(
    epochs=3,
    batch_size=8,
    max_slices_per_unit=2,
    chunk_units=8,
    learning_rate=0.05,
    seed=2,
    checkpoint_every=1,
)


class _Crash(Exception):
    """Stands for the process dying (raised from inside the training loop)."""


def _crash_at(monkeypatch: pytest.MonkeyPatch, *, counted: int, after_count: bool) -> None:
    """Make training die when the step that would be the ``counted``-th starts.

    after_count=False: before that step is recorded (the checkpoint of the step before is the
    last thing written, nothing is repeated); True: after it is recorded, before its update.
    """
    original = checkpoint.count_step

    def count_step(run: Path, total: int) -> None:
        if total == counted and not after_count:
            raise _Crash
        original(run, total)
        if total == counted:
            raise _Crash

    monkeypatch.setattr(checkpoint, "count_step", count_step)


def _weights(run: Path) -> list[np.ndarray]:
    from covidct.tfsetup import keras

    return keras.models.load_model(run / "model.keras", compile=False).get_weights()


def _report(run: Path) -> dict:
    return json.loads((run / "privacy_report.json").read_text())


def _use_known_key(m: pytest.MonkeyPatch, n: int) -> None:
    """Every training attempt draws the test key ``n`` instead of an OS key (tests only)."""
    m.setattr(RunSecret, "draw", classmethod(lambda cls: known_secret(n)))


@pytest.fixture(scope="module")
def whole_run(prep: Path, tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("whole")
    with pytest.MonkeyPatch.context() as m:
        _use_known_key(m, 2)
        return train(prep, config=CFG, target_epsilon=3.0, runs_dir=runs, run_id="whole")


def test_a_run_resumed_from_its_checkpoint_equals_the_uninterrupted_run(
    prep, tmp_path, monkeypatch, whole_run
):
    """With the uninterrupted run's key injected (a real resume draws a fresh one), a resume
    repeats exactly what the uninterrupted run did: the checkpoint holds everything else."""
    _use_known_key(monkeypatch, 2)
    plan = plan_privacy(n_units=whole_run.privacy.n_units, config=CFG, target_epsilon=3.0)
    crash_step = plan.steps_per_epoch + 1  # inside the second epoch
    with monkeypatch.context() as m:
        _crash_at(m, counted=crash_step + 1, after_count=False)
        with pytest.raises(_Crash):
            train(prep, config=CFG, target_epsilon=3.0, runs_dir=tmp_path, run_id="r")
    run = tmp_path / "r"
    assert not (run / "run.json").exists()
    assert checkpoint.steps_counted(run) == crash_step
    saved = checkpoint.load_state(run)
    assert saved is not None and saved.loop.next_step == crash_step
    assert len(saved.loop.history) == 1  # the first epoch's validation survived

    result = resume(run)
    assert (run / "run.json").is_file()
    # slice choice: (seed, step); sample and noise: (key, step); optimizer slots restored
    for a, b in zip(_weights(run), _weights(whole_run.run_dir), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    rep = _report(run)
    assert rep["steps"] == plan.steps == _report(whole_run.run_dir)["steps"]
    assert rep["steps_repeated"] == 0
    assert rep["epsilon"] == pytest.approx(whole_run.privacy.epsilon)
    assert json.loads((run / "run.json").read_text())["attempts"] == 2
    assert result.privacy.epsilon <= 3.0


def test_steps_lost_after_the_checkpoint_are_counted_again_and_the_run_stops_within_target(
    prep, tmp_path, monkeypatch
):
    cfg = replace(CFG, checkpoint_every=3)
    plan = plan_privacy(n_units=_n_units(prep), config=cfg, target_epsilon=3.0)
    crash = plan.steps_per_epoch + 2  # steps counted when the process dies
    with monkeypatch.context() as m:
        _crash_at(m, counted=crash, after_count=True)
        with pytest.raises(_Crash):
            train(prep, config=cfg, target_epsilon=3.0, runs_dir=tmp_path, run_id="r")
    run = tmp_path / "r"
    saved = checkpoint.load_state(run)
    assert saved is not None
    lost = crash - saved.loop.next_step
    assert lost >= 1

    messages: list[str] = []
    result = resume(run, on_event=messages.append)
    rep = _report(run)
    assert rep["steps_repeated"] == lost
    assert rep["steps"] >= crash  # every step ever started
    assert rep["epsilon"] <= 3.0  # the calibrated plan has no room: the run ends early instead
    assert rep["epsilon"] == pytest.approx(
        accounting.compute_epsilon(
            noise_multiplier=rep["noise_multiplier"],
            sampling_rate=rep["sampling_rate"],
            steps=rep["steps"],
            delta=rep["delta"],
        )
    )
    if rep["steps"] < plan.steps + lost:
        assert any("training stops after" in msg for msg in messages), messages
    assert any("counted twice" in note for note in rep["notes"])
    assert "of which repeated after a resume" in (run / "privacy_report.md").read_text()
    entry = [e for e in read_ledger(prep).entries if e.run_dir == str(run.resolve())][-1]
    assert entry.status == "finished" and entry.steps == rep["steps"]
    assert result.privacy.steps == rep["steps"]


def test_a_run_with_no_budget_left_refuses_to_train_but_finishes(prep, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _crash_at(m, counted=3, after_count=False)
        with pytest.raises(_Crash):
            train(prep, config=CFG, target_epsilon=3.0, runs_dir=tmp_path, run_id="r")
    run = tmp_path / "r"
    plan = plan_privacy(n_units=_n_units(prep), config=CFG, target_epsilon=3.0)
    checkpoint.count_step(run, plan.steps)  # as if every planned step had been started
    messages: list[str] = []
    resume(run, on_event=messages.append)
    assert any("refusing to train further" in msg for msg in messages), messages
    rep = _report(run)
    assert rep["steps"] == plan.steps and rep["epsilon"] <= 3.0
    assert rep["steps_repeated"] == plan.steps - 2


def test_resume_refuses_a_finished_run_and_a_folder_that_is_not_a_run(whole_run, tmp_path):
    with pytest.raises(checkpoint.ResumeError, match="finished run"):
        resume(whole_run.run_dir)
    with pytest.raises(checkpoint.ResumeError, match=r"no plan\.json"):
        resume(tmp_path)


def test_cli_resume_takes_no_other_settings(whole_run, capsys):
    assert main(["train", "--resume", str(whole_run.run_dir), "--epsilon", "8"]) == 2
    assert "drop --epsilon" in capsys.readouterr().err
    assert main(["train", "--resume", str(whole_run.run_dir)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_sigkill_mid_epoch_then_resume_gives_a_complete_honest_run(prep, tmp_path):
    """A real process killed with SIGKILL in the middle of an epoch, then resumed."""
    runs = tmp_path / "runs"
    run = runs / "killed"
    sets = {
        "epochs": 4,
        "batch_size": 8,
        "max_slices_per_unit": 2,
        "chunk_units": 8,
        "checkpoint_every": 2,
        "seed": 4,
    }
    cmd = [sys.executable, "-m", "covidct.cli", "train", "--data", str(prep), "--epsilon", "3"]
    cmd += ["--runs", str(runs), "--run-id", "killed", "--no-progress"]
    for key, value in sets.items():
        cmd += ["--set", f"train.{key}={value}"]
    plan = plan_privacy(
        n_units=_n_units(prep), config=replace(CFG, epochs=4, seed=4), target_epsilon=3.0
    )
    spe = plan.steps_per_epoch
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            counted = checkpoint.steps_counted(run) if (run / "checkpoints").exists() else 0
            if counted > spe and counted % spe not in (0, 1):  # well inside epoch 2 or later
                break
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "run.json").exists()
    started = checkpoint.steps_counted(run)  # every step the killed process began
    assert 0 < started < plan.steps

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    rep = _report(run)
    assert rep["steps"] >= started
    assert rep["epsilon"] <= 3.0 + 1e-9
    for name in ("model.keras", "metrics.json", "history.json", "audit.json", "run.json"):
        assert (run / name).is_file(), name
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert not math.isnan(history[-1]["epsilon"])


def _n_units(prep: Path) -> int:
    from covidct.data.units import PrivacyUnit, load_units

    return len(load_units(prep, "train", PrivacyUnit.PATIENT))


def test_plan_json_stores_sigma_and_a_resume_that_would_change_it_refuses(
    prep, tmp_path, monkeypatch
):
    with monkeypatch.context() as m:
        _crash_at(m, counted=2, after_count=False)
        with pytest.raises(_Crash):
            train(prep, config=CFG, target_epsilon=3.0, runs_dir=tmp_path, run_id="r")
    run = tmp_path / "r"
    path = run / "checkpoints" / "plan.json"
    saved = json.loads(path.read_text())
    plan = plan_privacy(n_units=_n_units(prep), config=CFG, target_epsilon=3.0)
    assert saved["noise_multiplier"] == plan.noise_multiplier > 0
    assert saved["sampling_rate"] == plan.sampling_rate and saved["delta"] == plan.delta
    path.write_text(json.dumps({**saved, "noise_multiplier": saved["noise_multiplier"] * 1.01}))
    with pytest.raises(checkpoint.ResumeError, match="trained with noise_multiplier"):
        resume(run)
    assert not (run / "run.json").exists()


def test_a_resume_draws_a_fresh_key_and_leaves_none_on_disk(prep, tmp_path, monkeypatch):
    drawn: list[RunSecret] = []
    real = RunSecret.draw.__func__  # type: ignore[attr-defined]

    def draw(cls):
        drawn.append(real(cls))
        return drawn[-1]

    monkeypatch.setattr(RunSecret, "draw", classmethod(draw))
    with monkeypatch.context() as m:
        _crash_at(m, counted=3, after_count=True)
        with pytest.raises(_Crash):
            cfg = replace(CFG, epochs=1)
            train(prep, config=cfg, target_epsilon=3.0, runs_dir=tmp_path, run_id="r")
    resume(tmp_path / "r")
    assert len(drawn) == 2 and drawn[0]._key != drawn[1]._key
    files = [p for p in (tmp_path / "r").rglob("*") if p.is_file()]
    for key in (s._key for s in drawn):
        assert not any(key in p.read_bytes() or key.hex().encode() in p.read_bytes() for p in files)
