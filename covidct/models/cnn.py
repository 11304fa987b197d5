"""Small plain GroupNorm CNNs: few parameters, because DP noise grows with the parameter count.

DP-SGD adds noise of norm about sigma * C * sqrt(d) / (expected batch) to every update, for d
trainable parameters; the clipped signal is at most C. A network that is just wide enough for
the task therefore learns in fewer private steps than a large one (Tramer & Boneh, "Differentially
Private Learning Needs Better Features (or Much More Data)", ICLR 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

from covidct.models.layers import Pooling, centre_input, conv_gn_act, pool_to_logit
from covidct.tfsetup import keras

__all__ = ["build_gn_cnn"]


def build_gn_cnn(
    *,
    input_size: int,
    seed: int,
    widths: Sequence[int] = (16, 32, 64),
    convs_per_stage: int = 1,
    pooling: Pooling = Pooling.MAX,
    groups: int = 4,
    activation: str = "relu",
    stem_stride: int = 1,
    norm_from_stage: int = 1,
    pool_after_last: bool = True,
    name: str = "gn_cnn",
) -> keras.Model:
    """A VGG-style GroupNorm CNN: stages of 3x3 conv-GN-act, each followed by 2x2 max pooling.

    Args:
        input_size: slices are (input_size, input_size, 1), floats in [0, 1].
        seed: seeds every initializer, so one seed gives one model.
        widths: filters per stage.
        convs_per_stage: 3x3 convolutions per stage.
        pooling: how the last feature map becomes the logit (see ``Pooling``).
        groups: GroupNorm groups (reduced to a divisor of each width).
        activation: Keras activation name ("relu", or "tanh": tempered activations keep
            DP-SGD gradients small, Papernot et al., AAAI 2021).
        stem_stride: stride of the very first convolution (2 quarters the cost of the
            largest feature map; findings of 4+ pixels survive it).
        norm_from_stage: stages before this one use a conv bias instead of GroupNorm.
            GroupNorm on the full-resolution first stage costs about twice its convolution on
            CPU and did not speed learning (benchmarks/learnability.py), so it starts at stage 1.
        pool_after_last: 2x2 max pooling after the last stage too (before global pooling).
        name: model name.

    Returns:
        An uncompiled model with one logit output (no sigmoid).
    """
    inputs = keras.Input((input_size, input_size, 1), name="slice")
    x = centre_input(inputs)
    for stage, filters in enumerate(widths):
        for j in range(convs_per_stage):
            x = conv_gn_act(
                x,
                filters,
                strides=stem_stride if stage == 0 and j == 0 else 1,
                seed=seed * 1000 + stage * 10 + j,
                name=f"s{stage}c{j}",
                groups=groups if stage >= norm_from_stage else 0,
                activation=activation,
            )
        if pool_after_last or stage < len(widths) - 1:
            x = keras.layers.MaxPooling2D(2, name=f"s{stage}_pool")(x)
    logit = pool_to_logit(x, pooling, seed=seed * 1000 + 999)
    return keras.Model(inputs, logit, name=name)
