"""Scattering models: a fixed scattering transform and a linear head (406 trainable parameters).

Training sees only the head, on cached features (``covidct.features``): per slice, 405 fixed
features (81 scattering channels averaged over the four quadrants of the slice and maximised over
it), standardised by constants fixed before training, then one dense logit. With the unit loss
``mean-logit`` this is logistic regression on a patient's mean slice features: convex and well
conditioned, so few noisy full-batch steps converge. DP noise in the averaged update has norm
about sigma * C * sqrt(406) / (q N): at N = 420 patients and q = 1 about the size of the clipped
signal, where a 23 k-parameter CNN hears 7 times more noise than signal.

The standardisation constants are the validation patients' feature means and variances, never
the private training patients' (see ``covidct.train``); they live in the model (a Keras
``Normalization`` layer).

The saved model takes slices, like every covidct model: ``assemble`` puts the transform in front
of the trained head, so inference and the dashboard need no feature cache.
"""

from __future__ import annotations

from typing import Any

from covidct.features.scattering import ScatteringMaps, ScatteringSpec, pooled_features
from covidct.tfsetup import keras

__all__ = ["assemble", "build_scatter_head"]


def _head(x: Any, *, mean: Any, variance: Any) -> Any:
    x = keras.layers.Normalization(axis=-1, mean=mean, variance=variance, name="standardise")(x)
    # zeros: every start is the same (p = 1/2 for everyone); logistic regression needs no
    # symmetry breaking
    return keras.layers.Dense(1, kernel_initializer="zeros", name="logit")(x)


def build_scatter_head(*, n_features: int, mean: Any, variance: Any) -> keras.Model:
    """The trainable head on ``n_features`` features per slice; one logit per slice.

    Args:
        n_features: the cached features' length per slice.
        mean, variance: per-feature standardisation constants (fixed, not trained).
    """
    inputs = keras.Input((n_features,), name="features")
    return keras.Model(inputs, _head(inputs, mean=mean, variance=variance), name="scatter_head")


def assemble(head: keras.Model, *, image_size: int, spec: ScatteringSpec) -> keras.Model:
    """Slices -> scattering -> pooled features -> ``head`` (same weights): what a run saves.

    Loading it needs ``import covidct.features`` (registers ``ScatteringMaps``).
    """
    norm = head.get_layer("standardise")
    inputs = keras.Input((image_size, image_size, 1), name="slice")
    maps = ScatteringMaps(
        image_size, j=spec.j, angles=spec.angles, log_floor=spec.log_floor, name="scattering"
    )(inputs)
    feats = pooled_features(maps, spec, image_size)
    logit = _head(feats, mean=norm.input_mean, variance=norm.input_variance)
    full = keras.Model(inputs, logit, name="scattering")
    full.get_layer("logit").set_weights(head.get_layer("logit").get_weights())
    return full
