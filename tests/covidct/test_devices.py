"""Device choice on a machine without an IPU or GPU, and the rules that do not need one.
(IPU selection: tests/covidct/ipu/test_pipeline.py; several replicas and workers:
tests/covidct/test_distributed.py.)"""

from __future__ import annotations

import logging

import pytest

from covidct import devices
from covidct.privacy.modes import ExecutionMode


@pytest.fixture(autouse=True)
def _no_cluster_no_graphcore(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setattr(devices, "_graphcore_available", lambda: False)


def test_without_an_accelerator_training_runs_on_one_cpu_and_says_why(caplog):
    choice = devices.choose_device()
    if choice.kind == "gpu":
        pytest.skip("this machine has a GPU")
    assert choice.kind == "cpu" and choice.reason == "no IPU or GPU found"
    assert choice.num_replicas == 1 and choice.is_chief and not choice.jit_compile
    assert choice.describe() == "CPU: no IPU or GPU found"
    with caplog.at_level(logging.WARNING, logger="covidct.devices"):
        asked = devices.choose_device(prefer="ipu")
    assert asked.kind in ("cpu", "gpu") and "Graphcore's TensorFlow is not installed" in caplog.text


def test_one_worker_agrees_with_itself_and_broadcasts_its_own_values():
    choice = devices.choose_device(prefer="cpu")
    assert choice.all_agree(True) and not choice.all_agree(False)
    assert choice.broadcast_from_chief([1.0, 2.0]) == [1.0, 2.0]
    assert choice.run(lambda a, b: a + b, 2, 3) == 5


def test_inconsistent_requests_are_refused():
    with pytest.raises(ValueError, match="--workers needs --worker-index"):
        devices.choose_device(workers="127.0.0.1:1,127.0.0.1:2")
    with pytest.raises(ValueError, match="local_devices must be >= 0"):
        devices.choose_device(prefer="cpu", local_devices=-1)


def test_auto_execution_is_nanobatch_on_the_ipu_and_vectorized_elsewhere():
    assert devices.resolve_execution(ExecutionMode.AUTO, "ipu") is ExecutionMode.NANOBATCH
    for kind in ("gpu", "cpu"):
        assert devices.resolve_execution(ExecutionMode.AUTO, kind) is ExecutionMode.VECTORIZED
    assert devices.resolve_execution(ExecutionMode.NANOBATCH, "cpu") is ExecutionMode.NANOBATCH
