"""Models on fixed features: a fixed transform of each slice (``covidct.features``) and a linear
head (one weight per feature and a bias: 31 for ``attenuation``, 406 for ``scattering``).

Training sees only the head, on cached features, standardised by constants fixed before training,
then one dense logit. With the unit loss ``mean-logit`` this is logistic regression on a
patient's mean slice features: convex and well conditioned, so few noisy full-batch steps
converge. DP noise in the averaged update has norm about sigma * C * sqrt(parameters) / (q N):
at N = 420 patients and q = 1, a 31-parameter head hears a third as much noise as signal, a
406-parameter one about as much, and a 23 k-parameter CNN 7 times more.

The standardisation constants are the validation patients' feature means and variances, never
the private training patients' (see ``covidct.train``); they live in the model (a Keras
``Normalization`` layer).

The saved model takes slices, like every covidct model: ``assemble`` puts the transform in front
of the trained head, so inference and the dashboard need no feature cache.
"""

from __future__ import annotations

from typing import Any

from covidct.features.transform import FixedTransform, Window
from covidct.tfsetup import keras

__all__ = ["assemble", "build_feature_head"]


def _head(x: Any, *, mean: Any, variance: Any) -> Any:
    x = keras.layers.Normalization(axis=-1, mean=mean, variance=variance, name="standardise")(x)
    # zeros: every start is the same (p = 1/2 for everyone); logistic regression needs no
    # symmetry breaking
    return keras.layers.Dense(1, kernel_initializer="zeros", name="logit")(x)


def build_feature_head(*, n_features: int, mean: Any, variance: Any) -> keras.Model:
    """The trainable head on ``n_features`` features per slice; one logit per slice.

    Args:
        n_features: the cached features' length per slice.
        mean, variance: per-feature standardisation constants (fixed, not trained).
    """
    inputs = keras.Input((n_features,), name="features")
    return keras.Model(inputs, _head(inputs, mean=mean, variance=variance), name="feature_head")


def assemble(
    head: keras.Model, *, image_size: int, spec: FixedTransform, window: Window
) -> keras.Model:
    """Slices -> the fixed transform -> ``head`` (same weights): what a run saves.

    Args:
        window: the lung window (level, width) the slices were prepared with.

    Loading it needs ``import covidct.features`` (registers the transforms' layers).
    """
    norm = head.get_layer("standardise")
    inputs = keras.Input((image_size, image_size, 1), name="slice")
    feats = spec.features(inputs, image_size=image_size, window=window)
    logit = _head(feats, mean=norm.input_mean, variance=norm.input_variance)
    full = keras.Model(inputs, logit, name=spec.name)
    full.get_layer("logit").set_weights(head.get_layer("logit").get_weights())
    return full
