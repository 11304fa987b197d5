"""Layerwise per-unit gradients against each unit's own gradient from a plain GradientTape."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from covidct.models import build_model
from covidct.privacy.mechanism import DPSettings, ExecutionMode, unit_losses
from covidct.privacy.modes import UnitLoss
from covidct.privacy.per_unit import LayerwisePerUnit, unsupported_reason
from covidct.privacy.step import DPGradient
from covidct.tfsetup import keras, tf
from tests.covidct.keys import known_secret


def _units(size: int, n_units: int = 4, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((n_units, k, size, size, 1), dtype=np.float32)
    mask = np.ones((n_units, k), np.float32)
    mask[1, 1:] = 0  # a patient with one slice
    mask[2, :] = 0  # no valid slice at all: zero gradient
    y = (np.arange(n_units) % 2).astype(np.float32)
    return x, mask, y


def _reference(
    model: keras.Model, x, mask, y, kind: UnitLoss = UnitLoss.MEAN
) -> list[list[np.ndarray]]:
    """Each unit's gradient, one unit at a time."""
    out = []
    for u in range(len(y)):
        with tf.GradientTape() as tape:
            logits = model(x[u], training=True)[:, 0]
            loss = unit_losses(logits[None], mask[u][None], y[u][None], kind)[0]
        grads = tape.gradient(loss, model.trainable_variables)
        out.append(
            [
                np.zeros(v.shape, np.float32) if g is None else g.numpy()
                for g, v in zip(grads, model.trainable_variables, strict=True)
            ]
        )
    return out


def _strided_model() -> keras.Model:
    """Strides, valid padding, dilation, 1x1 and 2x2 convs, odd sizes and a Dense head."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((13, 13, 1))
    h = keras.layers.Conv2D(4, 3, strides=2, padding="same", use_bias=True)(inp)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Conv2D(6, (3, 2), padding="valid", use_bias=False)(h)
    h = keras.layers.GroupNormalization(groups=3)(h)
    h = keras.layers.Activation("tanh")(h)
    h = keras.layers.Conv2D(6, 3, dilation_rate=2, padding="same")(h)
    h = keras.layers.Conv2D(5, 1)(h)
    h = keras.layers.Conv2D(5, 2, padding="same")(h)  # "same" padded unevenly
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(3)(h)
    out = keras.layers.Dense(1)(keras.layers.Activation("tanh")(h))
    return keras.Model(inp, out)


def _live_resnet() -> keras.Model:
    """gn_resnet18 with every GroupNorm gamma random: its residual branches start at gamma 0,
    which would give their convolutions zero gradients and so nothing to check."""
    model = build_model("gn_resnet18", input_size=32, seed=1)
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.GroupNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
    return model


@pytest.mark.parametrize(
    "make, size",
    [
        (lambda: build_model("gn_cnn_small", input_size=32, seed=1), 32),
        (_live_resnet, 32),
        (_strided_model, 13),
    ],
    ids=["gn_cnn_small", "gn_resnet18", "strided_valid_dilated"],
)
@pytest.mark.parametrize("kind", list(UnitLoss), ids=lambda k: k.value)
def test_layerwise_gradients_equal_each_units_own_gradient(make, size, kind):
    model = make()
    assert unsupported_reason(model) is None
    x, mask, y = _units(size)
    losses_fn = functools.partial(unit_losses, kind=kind)
    layerwise = LayerwisePerUnit(model, list(model.trainable_variables), losses_fn)
    grads, losses = layerwise.grads(tf.constant(x), tf.constant(mask), tf.constant(y))
    want = _reference(model, x, mask, y, kind)
    # every variable has a gradient to compare (a dead model would pass with all zeros)
    dead = [
        v.name
        for i, v in enumerate(model.trainable_variables)
        if not any(np.any(w[i]) for w in want)
    ]
    assert not dead, dead
    for u in range(len(y)):
        for v, (got, ref) in enumerate(zip(grads, want[u], strict=True)):
            scale = max(float(np.abs(ref).max()), 1e-3)
            np.testing.assert_allclose(
                got[u].numpy() / scale, ref / scale, atol=2e-5, err_msg=f"unit {u} var {v}"
            )
    assert float(losses[2]) == 0.0
    assert all(float(np.abs(g[2]).max()) == 0.0 for g in grads)  # no slices, no gradient


def test_lse_unit_loss_is_the_cross_entropy_of_the_log_mean_exp_of_valid_slices():
    logits = np.array([[2.0, -1.0, 0.5], [0.3, 9.0, 9.0], [1.0, 1.0, 1.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], np.float32)
    y = np.array([1.0, 0.0, 1.0], np.float32)
    got = unit_losses(tf.constant(logits), tf.constant(mask), tf.constant(y), UnitLoss.LSE)

    def bce(z: float, t: float) -> float:
        return float(np.log1p(np.exp(-z)) if t else np.log1p(np.exp(z)))

    z0 = float(np.log(np.mean(np.exp(logits[0]))))
    np.testing.assert_allclose(got.numpy(), [bce(z0, 1), bce(0.3, 0), 0.0], rtol=1e-5)
    # a single strong slice dominates the unit logit (a smooth max), unlike the mean loss
    mean = unit_losses(tf.constant(logits), tf.constant(mask), tf.constant(y), UnitLoss.MEAN)
    assert float(got[0]) < float(mean[0])


def test_unsupported_layers_are_named_and_fall_back_to_vectorized_map():
    inp = keras.Input((8, 8, 1))
    h = keras.layers.DepthwiseConv2D(3, padding="same")(inp)
    h = keras.layers.Conv2D(2, 3, activation="relu")(h)
    out = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    reason = unsupported_reason(model)
    assert reason is not None and "DepthwiseConv2D" in reason
    settings = DPSettings(clip_norm=0.1, noise_multiplier=0.0, expected_batch_size=2.0)
    dp = DPGradient(model, settings=settings, mode=ExecutionMode.VECTORIZED, secret=known_secret(0))
    assert dp.vectorized_impl == "vectorized_map"
    with pytest.raises(ValueError, match="DepthwiseConv2D"):
        DPGradient(
            model,
            settings=settings,
            mode=ExecutionMode.VECTORIZED,
            secret=known_secret(0),
            vectorized_impl="layerwise",
        )


def test_built_in_activation_and_shared_layers_are_refused():
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(2, 3, activation="relu")(inp)
    out = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    reason = unsupported_reason(keras.Model(inp, out))
    assert reason is not None and "activation" in reason

    shared = keras.layers.Conv2D(1, 3, padding="same")
    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(1)(keras.layers.Flatten()(shared(shared(inp))))
    reason = unsupported_reason(keras.Model(inp, out))
    assert reason is not None and "more than once" in reason
