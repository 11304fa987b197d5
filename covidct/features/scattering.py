"""Fixed scattering features of one slice: the only place covidct touches kymatio.

A 2D scattering transform (Mallat 2012; Bruna and Mallat 2013) at scale J with L orientations
maps a slice to 1 + J*L + L^2*J(J-1)/2 channels (81 at J=2, L=8) at 1/2^J of its side: local
averages of the slice, of the moduli of its Morlet wavelet responses, and of the moduli of those
(texture at two scales). The filters are fixed and data-independent, so the features are a fixed
function of one slice: computing them costs no privacy, and a model that learns only a small head
on top of them hears far less DP noise than a CNN learning its filters from a few hundred
patients (Tramer and Boneh, ICLR 2021, "Differentially Private Learning Needs Better Features").

What covidct feeds a head, per slice: the maps log(S + floor) (channels last), averaged over a
grid x grid partition of the slice and maximised over the whole slice: channels * (grid^2 + 1)
numbers (405 at J=2, L=8, grid 2). The logarithm makes the channels' very different scales
(order 0 vs order 2) comparable without any statistic of the data; the maximum keeps a small
finding that an average over a quarter of the slice would dilute.

kymatio 0.3.0 is pinned (the project is dormant). Its package import (``import kymatio``'s
frontends ``kymatio.tensorflow`` / ``kymatio.numpy``) fails on scipy >= 1.17 (kymatio issue 1068:
``scipy.special.sph_harm`` was removed), so this module imports the 2D frontends' own modules,
which never use it. ``tests/covidct/test_scattering.py`` checks the TensorFlow frontend against
kymatio's numpy frontend.

Saved models that contain ``ScatteringMaps`` load with plain ``keras.models.load_model`` after one
import, which registers the layer::

    import covidct.features  # noqa: F401  (registers covidct>ScatteringMaps)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from covidct.features.transform import Window
from covidct.tfsetup import keras, tf

__all__ = [
    "KYMATIO_VERSION",
    "ScatteringMaps",
    "ScatteringSpec",
    "pooled_features",
]

KYMATIO_VERSION = "0.3.0"


@dataclass(frozen=True)
class ScatteringSpec:
    """The transform's parameters; with the slice settings they key the feature cache.

    Attributes:
        j: scale: the maps have 1/2^j of the slice's side.
        angles: L, orientations of the wavelets.
        grid: the maps are averaged over grid x grid cells of the slice.
        log_floor: maps are log(S + log_floor).
    """

    j: int = 2
    angles: int = 8
    grid: int = 2
    log_floor: float = 1e-3

    transform_id: ClassVar[str] = "scattering2d"

    @property
    def name(self) -> str:
        return "scattering"

    @property
    def needs_hu(self) -> bool:
        return False

    @property
    def channels(self) -> int:
        """1 + J L + L^2 J (J - 1) / 2: orders 0, 1 and 2."""
        return 1 + self.j * self.angles + self.angles**2 * self.j * (self.j - 1) // 2

    @property
    def size(self) -> int:
        """Features per slice: channels * (grid^2 + 1)."""
        return self.channels * (self.grid**2 + 1)

    def map_side(self, image_size: int) -> int:
        """Side of the scattering maps for ``image_size`` slices."""
        return image_size // 2**self.j

    def check(self, image_size: int) -> None:
        """Raise ValueError when ``image_size`` does not fit the transform."""
        if self.j < 1 or self.angles < 1 or self.grid < 1 or self.log_floor <= 0:
            raise ValueError(f"invalid scattering parameters {self}")
        step = 2**self.j * self.grid
        if image_size % step or image_size < 4 * step:
            raise ValueError(
                f"scattering at J={self.j} on a {self.grid}x{self.grid} grid needs slices whose "
                f"side is a multiple of {step} and at least {4 * step} pixels; these are "
                f"{image_size}: prepare with --image-size "
                f"{max(4 * step, round(image_size / step) * step)}"
            )

    def record(self, slice_settings: dict[str, Any]) -> dict[str, Any]:
        """What features of slices made with ``slice_settings`` are: this transform, kymatio's
        version and the slice settings (the cache's ``spec.json`` and key)."""
        return {
            "transform": self.transform_id,
            "kymatio": KYMATIO_VERSION,
            **asdict(self),
            "slices": slice_settings,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ScatteringSpec:
        return cls(
            j=int(record["j"]),
            angles=int(record["angles"]),
            grid=int(record["grid"]),
            log_floor=float(record["log_floor"]),
        )

    def describe(self) -> str:
        return f"scattering (J={self.j}, L={self.angles})"

    def features(self, inputs: Any, *, image_size: int, window: Window) -> Any:
        """The window does not matter: scattering reads the stored values as they are."""
        del window
        maps = ScatteringMaps(
            image_size, j=self.j, angles=self.angles, log_floor=self.log_floor, name=self.name
        )(inputs)
        return pooled_features(maps, self, image_size)


def _frontend(image_size: int, spec: ScatteringSpec) -> Any:
    from kymatio.scattering2d.frontend.tensorflow_frontend import ScatteringTensorFlow2D

    return ScatteringTensorFlow2D(J=spec.j, shape=(image_size, image_size), L=spec.angles)


@keras.utils.register_keras_serializable(package="covidct")
class ScatteringMaps(keras.layers.Layer):  # type: ignore[misc]
    """(B, S, S, 1) slices in [0, 1] -> (B, S/2^J, S/2^J, channels) log scattering maps.

    No weights: the filters are rebuilt from the config when a saved model loads.
    """

    def __init__(
        self,
        image_size: int,
        j: int = 2,
        angles: int = 8,
        log_floor: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.j, self.angles, self.log_floor = int(j), int(angles), float(log_floor)
        self.spec = ScatteringSpec(j=self.j, angles=self.angles, grid=1, log_floor=self.log_floor)
        self.spec.check(self.image_size)
        self._scattering = _frontend(self.image_size, self.spec)

    def call(self, inputs: Any) -> Any:
        s = self._scattering(inputs[..., 0])  # (B, C, h, w)
        return tf.math.log(tf.transpose(s, [0, 2, 3, 1]) + self.log_floor)

    def compute_output_shape(self, input_shape: Any) -> Any:
        side = self.spec.map_side(self.image_size)
        return (input_shape[0], side, side, self.spec.channels)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "j": self.j,
            "angles": self.angles,
            "log_floor": self.log_floor,
        }


def pooled_features(maps: Any, spec: ScatteringSpec, image_size: int) -> Any:
    """Keras tensors: (side, side, C) maps -> (C * (grid^2 + 1),) features (built-in layers)."""
    cell = spec.map_side(image_size) // spec.grid
    mean = keras.layers.AveragePooling2D(cell, name="grid_mean")(maps)
    mean = keras.layers.Flatten(name="grid_mean_flat")(mean)
    top = keras.layers.GlobalMaxPooling2D(name="slice_max")(maps)
    return keras.layers.Concatenate(name="features")([mean, top])
