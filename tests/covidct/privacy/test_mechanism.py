"""The DP step's pure pieces (``covidct.privacy.mechanism``): the clip, the noisy mean, the
settings' own checks, the unit losses. ``test_step.py`` tests them assembled in ``DPGradient``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidct.privacy.mechanism import (
    Clipper,
    ClippingMode,
    DPSettings,
    clip_by_groups,
    noisy_mean,
    unit_losses,
)
from covidct.privacy.modes import UnitLoss
from covidct.tfsetup import tf


def _vars() -> list[tf.Variable]:
    return [tf.Variable(tf.zeros([3])), tf.Variable(tf.zeros([2, 2]))]


def test_flat_clipping_brings_each_unit_within_c_and_leaves_small_ones_alone():
    settings = DPSettings(clip_norm=1.0, noise_multiplier=0.0, expected_batch_size=2.0)
    clipper = Clipper(settings, _vars(), [[0, 1]])
    grads = [tf.constant([[3.0, 0.0, 4.0], [0.1, 0.0, 0.0]]), tf.zeros([2, 2, 2])]
    factors = clipper.factors(grads, batched=True)
    clipped = [
        g * tf.reshape(f, [-1] + [1] * (len(g.shape) - 1))
        for g, f in zip(grads, factors, strict=True)
    ]
    norms = np.sqrt(
        sum(np.sum(np.square(c.numpy()), axis=tuple(range(1, c.ndim))) for c in clipped)
    )
    np.testing.assert_allclose(norms, [1.0, 0.1], rtol=1e-5)


def test_per_layer_clipping_bounds_each_group_by_its_share_of_c():
    settings = DPSettings(
        clip_norm=2.0,
        noise_multiplier=0.0,
        expected_batch_size=1.0,
        clipping=ClippingMode.PER_LAYER,
    )
    clipper = Clipper(settings, _vars(), [[0], [1]])
    assert sum(c * c for c in clipper.group_norms) == pytest.approx(4.0)
    grads = [tf.constant([30.0, 0.0, 40.0]), tf.constant([[0.1, 0.0], [0.0, 0.0]])]
    clipped = clip_by_groups(grads, clipper.group_of_var, bounds=clipper.group_norms)
    assert float(tf.norm(clipped[0])) == pytest.approx(clipper.group_norms[0], rel=1e-5)
    assert float(tf.norm(clipped[1])) == pytest.approx(0.1, rel=1e-5)  # within its bound


def test_the_noisy_mean_divides_by_the_expected_batch_size_and_noise_weight_zero_adds_none():
    sums = [tf.constant([2.0, 4.0])]
    seed = tf.constant([1, 2], tf.int64)
    quiet = DPSettings(clip_norm=1.0, noise_multiplier=0.0, expected_batch_size=4.0)
    np.testing.assert_allclose(noisy_mean(sums, settings=quiet, noise_seed=seed)[0], [0.5, 1.0])
    noisy = DPSettings(clip_norm=1.0, noise_multiplier=5.0, expected_batch_size=4.0)
    off = noisy_mean(sums, settings=noisy, noise_seed=seed, noise_weight=0.0)[0]
    on = noisy_mean(sums, settings=noisy, noise_seed=seed)[0]
    np.testing.assert_allclose(off, [0.5, 1.0])
    assert not np.allclose(on, off)


def test_settings_that_have_no_privacy_meaning_are_refused():
    with pytest.raises(ValueError, match="noise without clipping"):
        DPSettings(clip_norm=None, noise_multiplier=1.0, expected_batch_size=1.0)
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        DPSettings(clip_norm=0.0, noise_multiplier=1.0, expected_batch_size=1.0)
    with pytest.raises(ValueError, match="expected_batch_size"):
        DPSettings(clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=0.0)


def test_mean_logit_unit_loss_is_the_cross_entropy_of_the_mean_slice_logit():
    logits = tf.constant([[1.0, 3.0, 100.0], [-2.0, 0.0, 0.0]])
    mask = tf.constant([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    y = tf.constant([1.0, 0.0])
    got = unit_losses(logits, mask, y, UnitLoss.MEAN_LOGIT).numpy()
    want = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-2.0))]  # mean logits 2 and -2
    np.testing.assert_allclose(got, want, rtol=1e-6)
