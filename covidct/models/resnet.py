"""ResNet-18 layout (He et al., 2016) with GroupNorm in place of BatchNorm.

GroupNorm (Wu & He, 2018) normalises each example on its own, which per-example clipping needs;
it is the replacement Opacus and jax_privacy use for DP training of ResNets. The stem is a 3x3
stride-2 convolution without max pooling, sized for 64-128 pixel slices rather than 224-pixel
photographs. The residual branch's last GroupNorm starts at zero gamma, so each block starts as
the identity (Goyal et al., 2017): a deep net then trains from the first steps like a shallow
one, which matters when DP allows only ~100 steps.
"""

from __future__ import annotations

from collections.abc import Sequence

from covidct.models.layers import (
    Pooling,
    centre_input,
    conv_gn_act,
    group_count,
    pool_to_logit,
)
from covidct.tfsetup import keras

__all__ = ["build_gn_resnet"]


def _basic_block(
    x: keras.KerasTensor, filters: int, *, strides: int, seed: int, groups: int, name: str
) -> keras.KerasTensor:
    shortcut = x
    if strides != 1 or int(x.shape[-1]) != filters:
        shortcut = conv_gn_act(
            x,
            filters,
            kernel_size=1,
            strides=strides,
            seed=seed + 7,
            groups=groups,
            activation=None,
            name=f"{name}_proj",
        )
    y = conv_gn_act(x, filters, strides=strides, seed=seed, groups=groups, name=f"{name}_a")
    y = keras.layers.Conv2D(
        filters,
        3,
        padding="same",
        use_bias=False,
        kernel_initializer=keras.initializers.HeNormal(seed=seed + 1),
        name=f"{name}_b_conv",
    )(y)
    y = keras.layers.GroupNormalization(
        groups=group_count(filters, groups), gamma_initializer="zeros", name=f"{name}_b_gn"
    )(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def build_gn_resnet(
    *,
    input_size: int,
    seed: int,
    blocks: Sequence[int] = (2, 2, 2, 2),
    base_width: int = 32,
    groups: int = 8,
    pooling: Pooling = Pooling.MAX,
    name: str = "gn_resnet18",
) -> keras.Model:
    """A GroupNorm ResNet with basic blocks (``blocks=(2, 2, 2, 2)`` is ResNet-18).

    Args:
        input_size: slices are (input_size, input_size, 1), floats in [0, 1].
        seed: seeds every initializer.
        blocks: basic blocks per stage; widths double and the map halves at each stage after
            the first.
        base_width: filters of the stem and the first stage (64 in the original ResNet-18;
            32 by default here: a quarter of the parameters, 2.8 M, for CPU and DP noise).
        groups: GroupNorm groups (reduced to a divisor of each width).
        pooling: how the last feature map becomes the logit.
        name: model name.

    Returns:
        An uncompiled model with one logit output (no sigmoid).
    """
    inputs = keras.Input((input_size, input_size, 1), name="slice")
    x = centre_input(inputs)
    x = conv_gn_act(x, base_width, strides=2, seed=seed * 1000, groups=groups, name="stem")
    for stage, n_blocks in enumerate(blocks):
        filters = base_width * 2**stage
        for b in range(n_blocks):
            x = _basic_block(
                x,
                filters,
                strides=2 if (stage > 0 and b == 0) else 1,
                seed=seed * 1000 + stage * 100 + b * 10 + 1,
                groups=groups,
                name=f"stage{stage + 1}_block{b + 1}",
            )
    logit = pool_to_logit(x, pooling, seed=seed * 1000 + 999)
    return keras.Model(inputs, logit, name=name)
