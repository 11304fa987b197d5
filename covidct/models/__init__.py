"""Model registry: name -> builder of a binary classifier of slices with one logit output.

Two families: CNNs that learn their filters (``gn_cnn_small``, ``gn_resnet18``), and models on
fixed features (``attenuation``, ``scattering``: a fixed transform and a linear head trained on
cached features; ``covidct.models.fixed``). The default is ``attenuation``: few trainable
parameters hear little DP noise, and its features see small ground-glass patches.

Every model takes (input_size, input_size, 1) slices with values in [0, 1] (the lung window
divided by 255) and returns one logit per slice: train with
``keras.losses.BinaryCrossentropy(from_logits=True)``. CNNs use tf-keras built-in layers only,
so ``keras.models.load_model(path)`` reads a saved one without covidct; a model on fixed
features needs ``import covidct.features`` first (it registers the transforms' layers).

    model = build_model("gn_cnn_small", input_size=64, seed=0)
    validate_model(model)  # raises ModelValidationError on BatchNorm
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from covidct.errors import ConfigError
from covidct.features.attenuation import AttenuationSpec
from covidct.features.scattering import ScatteringSpec
from covidct.features.transform import FixedTransform
from covidct.models.cnn import build_gn_cnn
from covidct.models.fixed import assemble, build_feature_head
from covidct.models.layers import Pooling
from covidct.models.resnet import build_gn_resnet
from covidct.models.validation import ModelValidationError, validate_model
from covidct.tfsetup import keras
from data_prep.settings import SliceSettings

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_REGISTRY",
    "ModelSpec",
    "ModelValidationError",
    "Pooling",
    "UnknownModelError",
    "assemble",
    "available_models",
    "build_head",
    "build_model",
    "feature_spec",
    "validate_model",
]


class UnknownModelError(ConfigError):
    """A model name that is not in the registry."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        builder: ``builder(input_size=..., seed=...) -> keras.Model`` on slices.
        description: one line for ``--help`` and the dashboard.
        features: for a model on fixed features, the transform: training builds only the head
            (``build_head``) on the cached features, and the run saves the transform and the
            head together (a model on slices, like the others).
    """

    builder: Callable[..., keras.Model]
    description: str
    features: FixedTransform | None = None


# the lung window of covidct prepare's defaults
DEFAULT_WINDOW = (SliceSettings().window_level, SliceSettings().window_width)


def _feature_model(*, input_size: int, seed: int, spec: FixedTransform) -> keras.Model:
    """The whole slice model with identity standardisation and the default lung window
    (training sets the constants and assembles with the prepared folder's own window)."""
    import numpy as np

    del seed  # the head starts at zero
    ones = np.ones(spec.size, np.float32)
    head = build_feature_head(n_features=spec.size, mean=0 * ones, variance=ones)
    return assemble(head, image_size=input_size, spec=spec, window=DEFAULT_WINDOW)


SCATTERING = ScatteringSpec(j=2, angles=8, grid=2)
ATTENUATION = AttenuationSpec()


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
        "3-stage CNN (16-32-64), GroupNorm from stage 2, global max pooling; 23 k params",
    ),
    "gn_resnet18": ModelSpec(
        functools.partial(build_gn_resnet, blocks=(2, 2, 2, 2), base_width=32),
        "ResNet-18 layout with GroupNorm, base width 32 (2.8 M params), global max pooling",
    ),
    "scattering": ModelSpec(
        functools.partial(_feature_model, spec=SCATTERING),
        "fixed scattering transform (J=2, L=8; 405 features per slice: quadrant means and slice "
        "max of 81 channels) + a linear head; 406 trainable params on cached features",
        features=SCATTERING,
    ),
    "attenuation": ModelSpec(
        functools.partial(_feature_model, spec=ATTENUATION),
        "fixed lung-attenuation features (30 per slice: 3 ground-glass bands, blobs of 3 sizes) "
        "+ a linear head; 31 trainable params on cached features; needs lungs masked; default",
        features=ATTENUATION,
    ),
}

DEFAULT_MODEL = "attenuation"


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


def feature_spec(name: str) -> FixedTransform | None:
    """The fixed transform of model ``name`` (None for a model that learns from slices)."""
    spec = MODEL_REGISTRY.get(name)
    if spec is None:
        raise UnknownModelError(
            f"unknown model {name!r}; available models: {', '.join(available_models())}"
        )
    return spec.features


def build_head(name: str, *, mean: Any, variance: Any) -> keras.Model:
    """The trainable head of feature model ``name`` (standardised by ``mean``, ``variance``)."""
    spec = feature_spec(name)
    if spec is None:
        raise ConfigError(f"model {name!r} learns from slices: it has no feature head")
    model = build_feature_head(n_features=spec.size, mean=mean, variance=variance)
    validate_model(model)
    return model
