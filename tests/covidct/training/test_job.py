"""Where training runs: a placement the machine cannot give is a configuration error that says
so, before any step."""

from __future__ import annotations

import pytest

from covidct.config import ConfigError
from covidct.train_config import TrainConfig
from covidct.training.job import Placement


def test_a_placement_that_cannot_be_given_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="cannot place training: --workers needs --worker-index"):
        Placement(workers="127.0.0.1:1,127.0.0.1:2").choose(TrainConfig())
    with pytest.raises(ConfigError, match="local_devices must be >= 0"):
        Placement(local_devices=-1).choose(TrainConfig(device="cpu"))
    assert Placement().choose(TrainConfig(device="cpu")).kind == "cpu"
