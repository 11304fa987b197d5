"""Model registry: name -> builder of a GroupNorm binary classifier with one logit output.

Every model takes (input_size, input_size, 1) slices with values in [0, 1] (the lung window
divided by 255) and returns one logit per slice: train with
``keras.losses.BinaryCrossentropy(from_logits=True)``. Models use tf-keras built-in layers only,
so ``keras.models.load_model(path)`` reads a saved one without covidct.

    model = build_model("gn_cnn_small", input_size=64, seed=0)
    validate_model(model)  # raises ModelValidationError on BatchNorm
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from covidct.errors import ConfigError
from covidct.models.cnn import build_gn_cnn
from covidct.models.layers import Pooling
from covidct.models.resnet import build_gn_resnet
from covidct.models.validation import ModelValidationError, validate_model
from covidct.tfsetup import keras

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_REGISTRY",
    "ModelSpec",
    "ModelValidationError",
    "Pooling",
    "UnknownModelError",
    "available_models",
    "build_model",
    "validate_model",
]


class UnknownModelError(ConfigError):
    """A model name that is not in the registry."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        builder: ``builder(input_size=..., seed=...) -> keras.Model``.
        description: one line for ``--help`` and the dashboard.
    """

    builder: Callable[..., keras.Model]
    description: str


# Choices measured in benchmarks/learnability.py on the phantom cohort (mild disease included):
# global max pooling learned where average, attention and logit-map pooling stayed near chance
# for 150+ steps; GroupNorm on the full-resolution first stage doubled the step time without
# learning faster; 23 k parameters keep DP noise (~ sqrt(parameters)) small.
MODEL_REGISTRY: dict[str, ModelSpec] = {
    "gn_cnn_small": ModelSpec(
        functools.partial(
            build_gn_cnn,
            widths=(16, 32, 64),
            pooling=Pooling.MAX,
            groups=4,
            norm_from_stage=1,
            name="gn_cnn_small",
        ),
        "3-stage CNN (16-32-64), GroupNorm from stage 2, global max pooling; 23 k params; default",
    ),
    "gn_resnet18": ModelSpec(
        functools.partial(build_gn_resnet, blocks=(2, 2, 2, 2), base_width=32),
        "ResNet-18 layout with GroupNorm, base width 32 (2.8 M params), global max pooling",
    ),
}

DEFAULT_MODEL = "gn_cnn_small"


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODEL_REGISTRY)


def build_model(name: str, *, input_size: int, seed: int) -> keras.Model:
    """Build the registered model ``name`` and check that DP-SGD can train it.

    Args:
        name: a key of ``MODEL_REGISTRY``.
        input_size: slice side in pixels (the prepared ``image_size``).
        seed: seeds every initializer (same seed, same weights).

    Returns:
        An uncompiled binary classifier with output shape (batch, 1): logits.

    Raises:
        UnknownModelError: ``name`` is not registered (the message lists the choices).
        ModelValidationError: the built model mixes examples within a batch.
    """
    spec = MODEL_REGISTRY.get(name)
    if spec is None:
        raise UnknownModelError(
            f"unknown model {name!r}; available models: {', '.join(available_models())}"
        )
    if input_size < 16:
        raise ConfigError(f"input_size must be at least 16 pixels, got {input_size}")
    model = spec.builder(input_size=input_size, seed=seed)
    validate_model(model)
    return model
