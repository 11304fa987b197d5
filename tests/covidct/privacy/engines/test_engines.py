"""Which engine ``make_engine`` picks; that every engine adds the same sums is tested in
``tests/covidct/privacy/test_step.py`` (against each other and tensorflow-privacy)."""

from __future__ import annotations

import pytest

from covidct.privacy.engines import make_engine
from covidct.privacy.engines.nanobatch import NanoBatch
from covidct.privacy.engines.unclipped import Unclipped
from covidct.privacy.engines.vectorized import Layerwise, VectorizedMap
from covidct.privacy.mechanism import Clipper, DPSettings
from covidct.privacy.modes import ExecutionMode, UnitLoss
from covidct.tfsetup import keras
from tests.covidct.privacy.test_step import tiny_model

CLIP = DPSettings(clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=4.0)
NO_CLIP = DPSettings(clip_norm=None, noise_multiplier=0.0, expected_batch_size=4.0)


def _engine(settings: DPSettings, mode: ExecutionMode, impl: str | None = None, model=None):
    model = model or tiny_model()
    variables = model.trainable_variables
    groups = [[i] for i in range(len(variables))]
    clipper = Clipper(settings, variables, groups)
    return make_engine(
        model,
        variables,
        clipper=clipper,
        mode=mode,
        unit_loss=UnitLoss.MEAN,
        vectorized_impl=impl,
    )


def test_each_mode_gets_its_engine():
    assert isinstance(_engine(CLIP, ExecutionMode.NANOBATCH)[0], NanoBatch)
    engine, how = _engine(CLIP, ExecutionMode.VECTORIZED)
    assert isinstance(engine, Layerwise) and how == "layerwise"
    engine, how = _engine(CLIP, ExecutionMode.VECTORIZED, "vectorized_map")
    assert isinstance(engine, VectorizedMap) and how == "vectorized_map"


def test_without_clipping_every_mode_takes_the_plain_backward_pass():
    for mode in (ExecutionMode.NANOBATCH, ExecutionMode.VECTORIZED):
        assert isinstance(_engine(NO_CLIP, mode)[0], Unclipped)


def test_a_model_the_layerwise_path_cannot_take_falls_back_or_is_refused_when_asked_for():
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(2, 3, padding="same")(inp)
    h = keras.layers.LayerNormalization()(h)  # no per-unit rule for it
    out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    engine, how = _engine(CLIP, ExecutionMode.VECTORIZED, model=model)
    assert isinstance(engine, VectorizedMap) and how == "vectorized_map"
    with pytest.raises(ValueError, match="layerwise per-unit gradients do not apply"):
        _engine(CLIP, ExecutionMode.VECTORIZED, "layerwise", model=model)


def test_unresolved_auto_and_unknown_implementations_are_refused():
    with pytest.raises(ValueError, match="AUTO"):
        _engine(CLIP, ExecutionMode.AUTO)
    with pytest.raises(ValueError, match="unknown vectorized_impl"):
        _engine(CLIP, ExecutionMode.NANOBATCH, "fast")
