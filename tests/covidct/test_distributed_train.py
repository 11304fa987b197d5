"""``covidct train`` data-parallel end to end: two workers on 127.0.0.1 train the model one
process trains (DP noise on), and only worker 0 writes. (Two logical CPU devices in one process:
tests/covidct/test_distributed.py, at the level of the DP step.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from covidct.privacy.ledger import read_ledger
from covidct.privacy.secret import RunSecret
from covidct.train import train
from covidct.train_config import TrainConfig
from tests.covidct.keys import known_secret
from tests.covidct.test_distributed import ROOT, TIMEOUT, _free_ports

SETTINGS = {
    "epochs": 2,
    "batch_size": 8,
    "max_slices_per_unit": 2,
    "chunk_units": 4,
    "learning_rate": 0.05,
    "seed": 5,
}
CFG = replace(TrainConfig(), **SETTINGS)


def _cmd(prep: Path, runs: Path, *extra: str, key: int) -> list[str]:
    """``covidct train`` whose OS key draw returns the known test key ``key``."""
    cmd = [sys.executable, str(ROOT / "tests" / "covidct" / "cli_known_key.py"), str(key)]
    cmd += ["train", "--data", str(prep), "--epsilon", "3"]
    cmd += ["--runs", str(runs), "--no-progress", *extra]
    for key, value in SETTINGS.items():
        cmd += ["--set", f"train.{key}={value}"]
    return cmd


def _start(cmd: list[str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _start_workers(prep: Path, base: Path) -> list[subprocess.Popen[bytes]]:
    """Two ``covidct train`` workers on free 127.0.0.1 ports, run id "mw", under base/w<i>.

    Each draws its OWN key (worker i: test key 5 + i); training must use the chief's."""
    workers = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    return [
        _start(
            [
                *_cmd(prep, base / f"w{i}", "--run-id", "mw", key=5 + i),
                "--workers",
                workers,
                "--worker-index",
                str(i),
            ]
        )
        for i in range(2)
    ]


def _weights(run: Path) -> list[np.ndarray]:
    from covidct.tfsetup import keras

    return keras.models.load_model(run / "model.keras", compile=False).get_weights()


@pytest.fixture(scope="module")
def runs(prep: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two workers run concurrently; the one-process run meanwhile."""
    base = tmp_path_factory.mktemp("dist_train")
    procs = dict(zip(["worker0", "worker1"], _start_workers(prep, base), strict=True))
    with pytest.MonkeyPatch.context() as m:  # the chief's key: the same sample and noise
        m.setattr(RunSecret, "draw", classmethod(lambda cls: known_secret(5)))
        single = train(prep, config=CFG, target_epsilon=3.0, runs_dir=base / "one", run_id="one")
    logs = {}
    try:
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=TIMEOUT)
            logs[name] = (proc.returncode, out.decode(errors="replace")[-3000:])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return {"base": base, "single": single, "logs": logs}


def test_every_process_succeeds(runs):
    for name, (rc, log) in runs["logs"].items():
        assert rc == 0, f"{name}:\n{log}"


def test_data_parallel_training_gives_the_one_process_model(runs):
    """Worker 1 drew another key than worker 0: the models match only if worker 1 trained with
    the chief's key, received over the collective (same sample, same single noise draw)."""
    run_dir = runs["base"] / "w0" / "mw"
    one = runs["single"].run_dir
    for a, b in zip(_weights(run_dir), _weights(one), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    rep, ref = (json.loads((d / "privacy_report.json").read_text()) for d in (run_dir, one))
    for key in ("epsilon", "noise_multiplier", "sampling_rate", "steps", "delta"):
        assert rep[key] == ref[key], key  # replicas change nothing in the guarantee
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["replicas"] == 2


def test_only_worker_zero_writes_the_run_and_the_ledger(runs, prep):
    assert not (runs["base"] / "w1").exists()
    assert "worker 0 wrote the run" in runs["logs"]["worker1"][1]
    assert json.loads((runs["base"] / "w0/mw/run.json").read_text())["workers"] == 2
    mine = [e for e in read_ledger(prep).entries if e.run_id == "mw"]
    assert len(mine) == 1 and mine[0].status == "finished"


def test_when_worker_zero_refuses_the_run_every_worker_stops(runs, prep):
    # the run folder exists already: worker 0 refuses, and worker 1 must not hang waiting
    procs = _start_workers(prep, runs["base"])
    try:
        outs = [p.communicate(timeout=TIMEOUT)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [2, 2], outs
    assert "exists and is not empty" in outs[0]
    assert "worker 0 refused" in outs[1]
