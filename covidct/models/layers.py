"""Building blocks shared by the model builders: tf-keras built-in layers only.

Only built-in layers are used (no Lambda, no custom classes) so that a saved model loads with
``keras.models.load_model(path)`` in any tf-keras, without covidct and without custom objects.
"""

from __future__ import annotations

import enum

from covidct.tfsetup import keras

__all__ = ["Pooling", "conv_gn_act", "group_count", "pool_to_logit"]

# Lung-windowed slices are stored as value/255 in [0, 1]; their mean is near 0.3 and their
# standard deviation near 0.3 on the phantom cohort. Centring the input makes the first
# convolution's gradient well conditioned from the first step (few DP steps leave no time to
# adapt a bias first).
_INPUT_CENTRE = 0.3
_INPUT_SCALE = 0.3


class Pooling(enum.Enum):
    """How a feature map becomes one logit.

    Only MAX learned mild disease in the study (benchmarks/learnability.py); the others are
    kept for comparison.

    Attributes:
        MAX: global max over space, then a dense logit. Keeps small findings; the gradient
            goes through one position per channel, so it learns slowly until a feature's
            maximum lands on findings (lung masking of the input shortens that phase).
        AVG: global average, then a dense logit. Dilutes a 5-pixel patch in a 4096-pixel slice:
            misses mild disease.
        ATTENTION: softmax attention over positions (a 1x1 convolution scores each position),
            attention-weighted mean of the features, then a dense logit.
        LOGIT_MAP: a 1x1 convolution gives a logit per position (is there a finding here?); the
            slice logit is their softmax-weighted mean, a smooth maximum whose gradient reaches
            every position (multiple-instance pooling over positions).
    """

    MAX = "max"
    AVG = "avg"
    ATTENTION = "attention"
    LOGIT_MAP = "logit_map"


def group_count(channels: int, groups: int) -> int:
    """The largest divisor of ``channels`` that is at most ``groups`` (GroupNorm needs one)."""
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return g


def conv_gn_act(
    x: keras.KerasTensor,
    filters: int,
    *,
    seed: int,
    name: str,
    kernel_size: int = 3,
    strides: int = 1,
    groups: int = 8,
    activation: str | None = "relu",
) -> keras.KerasTensor:
    """Conv2D -> GroupNormalization -> activation; ``groups=0``: Conv2D with bias, no norm.

    With GroupNorm the convolution has no bias (GroupNorm's beta replaces it).
    """
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=groups == 0,
        kernel_initializer=keras.initializers.HeNormal(seed=seed),
        name=f"{name}_conv",
    )(x)
    if groups:
        x = keras.layers.GroupNormalization(groups=group_count(filters, groups), name=f"{name}_gn")(
            x
        )
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_act")(x)
    return x


def centre_input(x: keras.KerasTensor) -> keras.KerasTensor:
    """Map the [0, 1] lung-window input to roughly zero mean and unit spread."""
    return keras.layers.Rescaling(
        1.0 / _INPUT_SCALE, offset=-_INPUT_CENTRE / _INPUT_SCALE, name="centre"
    )(x)


def pool_to_logit(x: keras.KerasTensor, pooling: Pooling, *, seed: int) -> keras.KerasTensor:
    """Reduce a (H, W, C) feature map to one logit per example (no sigmoid)."""
    dense_init = keras.initializers.GlorotUniform(seed=seed)
    if pooling is Pooling.MAX:
        x = keras.layers.GlobalMaxPooling2D(name="pool_max")(x)
        return keras.layers.Dense(1, kernel_initializer=dense_init, name="logit")(x)
    if pooling is Pooling.AVG:
        x = keras.layers.GlobalAveragePooling2D(name="pool_avg")(x)
        return keras.layers.Dense(1, kernel_initializer=dense_init, name="logit")(x)
    h, w, c = (int(d) for d in x.shape[1:])
    if pooling is Pooling.ATTENTION:
        score = keras.layers.Conv2D(1, 1, kernel_initializer="zeros", name="attn_score")(
            x
        )  # zeros: attention starts as the plain average and sharpens as it learns
        weights = keras.layers.Softmax(axis=1, name="attn_softmax")(
            keras.layers.Reshape((h * w, 1), name="attn_flat")(score)
        )
        feats = keras.layers.Reshape((h * w, c), name="feat_flat")(x)
        pooled = keras.layers.Dot(axes=1, name="attn_pool")([weights, feats])  # (1, C)
        pooled = keras.layers.Flatten(name="attn_out")(pooled)
        return keras.layers.Dense(1, kernel_initializer=dense_init, name="logit")(pooled)
    if pooling is Pooling.LOGIT_MAP:
        logit_map = keras.layers.Conv2D(1, 1, kernel_initializer=dense_init, name="logit_map")(x)
        flat = keras.layers.Reshape((h * w, 1), name="logit_flat")(logit_map)
        weights = keras.layers.Softmax(axis=1, name="logit_softmax")(flat)
        pooled = keras.layers.Dot(axes=1, name="logit_pool")([weights, flat])  # (1, 1)
        return keras.layers.Flatten(name="logit")(pooled)
    raise ValueError(f"unknown pooling {pooling!r}")
