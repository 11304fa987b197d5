"""What a fixed feature transform is, and the one extractor that runs any of them.

A transform is a fixed, data-independent function of one slice (no weight is learned from any
patient), so computing it costs no privacy. Two are implemented: ``ScatteringSpec``
(``covidct.features.scattering``: texture at two scales) and ``AttenuationSpec``
(``covidct.features.attenuation``: how much of the slice lies in lung attenuation bands, and in
blobs of what size). A spec is a frozen dataclass of the transform's parameters; with the
prepared folder's slice settings it keys the feature cache (``covidct.features.cache``) and
builds the Keras layers that a saved model puts in front of its trained head.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

from covidct.tfsetup import keras, tf

__all__ = ["FixedTransform", "Window", "cache_key", "compute_features", "extractor", "window_of"]

# (level, width) in HU of the lung window the slices were stored in: value / 255 = position in it
Window = tuple[float, float]


def window_of(slice_settings: dict[str, Any]) -> Window:
    """The lung window of slices prepared with ``slice_settings`` (``dataset.json``)."""
    return float(slice_settings["window_level"]), float(slice_settings["window_width"])


class FixedTransform(Protocol):
    """A fixed slice -> features transform (see the module docstring)."""

    @property
    def name(self) -> str:
        """Names the cache folder and the saved model's transform layer."""

    @property
    def size(self) -> int:
        """Features per slice."""

    @property
    def needs_hu(self) -> bool:
        """True when the features read the slices as HU (not for image folders' gray levels)."""

    def check(self, image_size: int) -> None:
        """Raise ValueError when slices of this side do not fit the transform."""

    def record(self, slice_settings: dict[str, Any]) -> dict[str, Any]:
        """What features of slices made with ``slice_settings`` are (cache ``spec.json``)."""

    def describe(self) -> str:
        """One line for the console."""

    def features(self, inputs: Any, *, image_size: int, window: Window) -> Any:
        """Keras tensors: (S, S, 1) slices in [0, 1] -> (size,) features. The first layer it
        adds holds the spatial maps (Grad-CAM looks there) and is named ``self.name``."""


def cache_key(spec: FixedTransform, slice_settings: dict[str, Any]) -> str:
    """A hash of ``spec.record(slice_settings)``: the cache folder's key."""
    blob = json.dumps(spec.record(slice_settings), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def extractor(image_size: int, spec: FixedTransform, window: Window) -> keras.Model:
    """Slices (S, S, 1) in [0, 1] -> their ``spec.size`` features."""
    spec.check(image_size)
    inputs = keras.Input((image_size, image_size, 1), name="slice")
    out = spec.features(inputs, image_size=image_size, window=window)
    return keras.Model(inputs, out, name=f"{spec.name}_features")


# one traced extractor per (size, spec, window) in this process: building and tracing one costs
# seconds, and a sweep computes features for several runs
_TRACED: dict[tuple[int, Any, Window], Any] = {}


def compute_features(
    slices_u8: Any, spec: FixedTransform, window: Window, *, batch: int = 128
) -> Any:
    """Features of (n, S, S) uint8 lung-window slices: (n, spec.size) float32."""
    import numpy as np

    n, size = len(slices_u8), int(slices_u8.shape[-1])
    fn = _TRACED.get((size, spec, window))
    if fn is None:
        model = extractor(size, spec, window)
        fn = _TRACED[(size, spec, window)] = tf.function(
            lambda x: model(x, training=False), reduce_retracing=True
        )
    out = np.empty((n, spec.size), np.float32)
    for start in range(0, n, batch):
        x = np.asarray(slices_u8[start : start + batch], np.float32)[..., None] / 255.0
        out[start : start + len(x)] = fn(tf.constant(x)).numpy()
    return out
