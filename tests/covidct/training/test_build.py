"""Building a run's pieces: the optimizer asked for, initial weights that fit or a clear error,
and no public start unless one is asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidct.data.units import DataError
from covidct.tfsetup import keras
from covidct.train_config import OptimizerName, TrainConfig
from covidct.training.build import (
    load_initial_weights,
    make_optimizer,
    public_start,
    trainable_count,
)


def _model(units: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(units)], name="m")


def test_each_optimizer_name_gives_that_optimizer_with_the_configured_rate():
    adam = make_optimizer(TrainConfig(optimizer=OptimizerName.ADAM, learning_rate=0.01), keras)
    assert isinstance(adam, keras.optimizers.Adam)
    momentum = make_optimizer(TrainConfig(optimizer=OptimizerName.MOMENTUM, momentum=0.8), keras)
    plain = make_optimizer(TrainConfig(optimizer=OptimizerName.SGD, momentum=0.8), keras)
    assert isinstance(momentum, keras.optimizers.SGD) and momentum.momentum == 0.8
    assert plain.momentum == 0.0
    assert float(adam.learning_rate) == pytest.approx(0.01)


def test_initial_weights_load_when_they_fit_and_say_why_when_not(tmp_path: Path):
    source = _model(2)
    source.save_weights(tmp_path / "w.weights.h5")
    target = _model(2)
    load_initial_weights(target, tmp_path / "w.weights.h5")
    for a, b in zip(source.get_weights(), target.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="not found"):
        load_initial_weights(target, tmp_path / "missing.weights.h5")
    with pytest.raises(DataError, match="same architecture and input size"):
        load_initial_weights(_model(3), tmp_path / "w.weights.h5")
    assert trainable_count(target) == 4 * 2 + 2


def test_no_public_start_without_initial_weights(prep: Path):
    assert public_start(TrainConfig(), prep) is None
