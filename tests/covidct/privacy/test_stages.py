"""Pipeline stages as clipping groups: consecutive, balanced, each within C_s, total within C."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.models import build_model
from covidct.privacy.mechanism import DPSettings, group_clip_norms
from covidct.privacy.modes import ClippingMode, ExecutionMode
from covidct.privacy.stages import StageError, stage_groups
from covidct.privacy.step import DPGradient
from covidct.tfsetup import keras
from tests.covidct.keys import known_secret


def _model() -> keras.Model:
    return build_model("gn_cnn_small", input_size=32, seed=0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_stages_are_consecutive_cover_every_variable_and_are_balanced(n):
    model = _model()
    groups = stage_groups(model, n)
    assert len(groups) == n and all(groups)
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(len(model.trainable_variables)))
    assert flat == sorted(flat)  # consecutive layers, in order
    sizes = [sum(int(np.prod(model.trainable_variables[i].shape)) for i in g) for g in groups]
    if n == 2:  # no stage holds (nearly) everything
        assert max(sizes) < 0.9 * sum(sizes)


def test_too_many_stages_is_a_clear_error():
    with pytest.raises(StageError, match="too few"):
        stage_groups(_model(), 1000)


@pytest.mark.parametrize("mode", [ExecutionMode.NANOBATCH, ExecutionMode.VECTORIZED])
def test_each_stage_is_clipped_to_its_bound_and_the_unit_to_c(mode):
    model = _model()
    groups = stage_groups(model, 3)
    c = 0.5
    dp = DPGradient(
        model,
        settings=DPSettings(
            clip_norm=c,
            noise_multiplier=0.0,
            expected_batch_size=1.0,
            clipping=ClippingMode.PER_LAYER,
        ),
        mode=mode,
        secret=known_secret(0),
        layer_groups=groups,
    )
    bounds = group_clip_norms(
        [sum(int(np.prod(model.trainable_variables[i].shape)) for i in g) for g in groups],
        clip_norm=c,
        proportional=False,
    )
    assert sum(b * b for b in bounds) == pytest.approx(c * c)
    rng = np.random.default_rng(0)
    x = rng.random((1, 2, 32, 32, 1), dtype=np.float32) * 5.0  # large inputs: large gradients
    dp.reset()
    dp.accumulate(x, np.ones((1, 2), np.float32), np.ones(1, np.float32), np.ones(1, np.float32))
    g = [a.numpy() for a in dp.clipped_sum()]
    norms = [np.sqrt(sum(float(np.sum(g[i] ** 2)) for i in grp)) for grp in groups]
    for norm, bound in zip(norms, bounds, strict=True):
        assert norm <= bound * (1 + 1e-5)
    assert max(n / b for n, b in zip(norms, bounds, strict=True)) > 0.99  # clipping was active
    assert np.sqrt(sum(n * n for n in norms)) <= c * (1 + 1e-5)  # total sensitivity <= C
