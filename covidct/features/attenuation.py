"""Fixed lung-attenuation features of one slice: how much of it lies in ground-glass bands, and
in blobs of what size.

Quantitative CT reads COVID-19 pneumonia as lung volume whose attenuation rose from aerated lung
(about -850 HU) into the ground-glass range (about -750 to -300 HU) or beyond. This transform
measures exactly that, with no learned filter:

1. For each attenuation band ``(lo, hi)`` a soft indicator map ``m = sigmoid((HU - lo) / t) *
   sigmoid((hi - HU) / t)`` (``t`` = ``softness_hu``): 1 where the pixel's HU lies in the band.
2. Each map averaged over square boxes of a few sides (``scales``, in pixels of a 96 px slice,
   scaled with the slice): near 1 only where a blob of band-attenuation pixels at least that wide
   lies, so vessels and partial-volume edges (thin) count little and a patch counts fully.
3. Per band, numbers per slice: the band's area fraction; and per box side, the largest box mean
   and the fraction of the slice whose box mean exceeds each of ``levels``. Then ``log(x + floor)``.

Three overlapping 250-300 HU bands (-750/-500, -650/-350, -500/-200) at boxes of 3, 5 and 9 px
give 30 numbers. They were chosen on synthetic style a (``benchmarks/study_defaults.py``): in
a non-private probe on style a they separated mild disease from negatives where the scattering
features stayed near chance (lesions of 2-5 cm cover under 1 % of a slice). They need slices
whose outside-lung is masked to air (``prepare.slices.mask_outside_lungs``): otherwise the body
wall's edges fill the bands.

Saved models that contain these layers load with plain ``keras.models.load_model`` after
``import covidct.features`` (which registers them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from covidct.features.transform import Window
from covidct.tfsetup import keras, tf

__all__ = ["AttenuationMaps", "AttenuationPool", "AttenuationSpec", "contribution_function"]

# softness of the level thresholds (box-mean units)
_LEVEL_SOFTNESS = 0.05


def _box_sides(scales: tuple[int, ...], reference_size: int, image_size: int) -> list[int]:
    return [max(1, round(k * image_size / reference_size)) for k in scales]


@dataclass(frozen=True)
class AttenuationSpec:
    """The transform's parameters; with the slice settings they key the feature cache.

    Attributes:
        bands_hu: attenuation bands (lo, hi) in HU.
        scales: box sides in pixels of a ``reference_size`` slice (scaled with the slice).
        reference_size: the slice side ``scales`` are given at.
        levels: box-mean thresholds: the fraction of the slice above each is a feature.
        softness_hu: width of the bands' soft edges, HU.
        log_floor: features are log(x + log_floor).
    """

    bands_hu: tuple[tuple[float, float], ...] = (
        (-750.0, -500.0),
        (-650.0, -350.0),
        (-500.0, -200.0),
    )
    scales: tuple[int, ...] = (3, 5, 9)
    reference_size: int = 96
    levels: tuple[float, ...] = (0.5, 0.8)
    softness_hu: float = 10.0
    log_floor: float = 1e-3

    transform_id: ClassVar[str] = "attenuation"

    @property
    def name(self) -> str:
        return "attenuation"

    @property
    def needs_hu(self) -> bool:
        return True

    @property
    def size(self) -> int:
        """bands * (1 + scales * (1 + levels))."""
        return len(self.bands_hu) * (1 + len(self.scales) * (1 + len(self.levels)))

    def check(self, image_size: int) -> None:
        bad = (
            not self.bands_hu
            or any(lo >= hi for lo, hi in self.bands_hu)
            or not self.scales
            or min(self.scales) < 1
            or self.softness_hu <= 0
            or self.log_floor <= 0
        )
        if bad:
            raise ValueError(f"invalid attenuation parameters {self}")
        if image_size < 16:
            raise ValueError(f"attenuation features need slices of 16 px or more, not {image_size}")

    def record(self, slice_settings: dict[str, Any]) -> dict[str, Any]:
        # lists, as JSON gives them back: a record read from a file compares equal
        return {
            "transform": self.transform_id,
            **json.loads(json.dumps(asdict(self))),
            "slices": slice_settings,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AttenuationSpec:
        return cls(
            bands_hu=tuple((float(lo), float(hi)) for lo, hi in record["bands_hu"]),
            scales=tuple(int(k) for k in record["scales"]),
            reference_size=int(record["reference_size"]),
            levels=tuple(float(v) for v in record["levels"]),
            softness_hu=float(record["softness_hu"]),
            log_floor=float(record["log_floor"]),
        )

    def describe(self) -> str:
        bands = ", ".join(f"{lo:g}..{hi:g}" for lo, hi in self.bands_hu)
        return f"attenuation bands {bands} HU at boxes of {'/'.join(map(str, self.scales))} px"

    def features(self, inputs: Any, *, image_size: int, window: Window) -> Any:
        maps = AttenuationMaps(
            image_size,
            window_level=window[0],
            window_width=window[1],
            bands_hu=self.bands_hu,
            scales=self.scales,
            reference_size=self.reference_size,
            softness_hu=self.softness_hu,
            name=self.name,
        )(inputs)
        return AttenuationPool(
            n_bands=len(self.bands_hu),
            n_scales=len(self.scales),
            levels=self.levels,
            log_floor=self.log_floor,
            name="features",
        )(maps)


@keras.utils.register_keras_serializable(package="covidct")
class AttenuationMaps(keras.layers.Layer):  # type: ignore[misc]
    """(B, S, S, 1) slices in [0, 1] -> (B, S, S, bands * (1 + scales)) maps: per band its soft
    indicator, then its box means at each scale. No weights."""

    def __init__(
        self,
        image_size: int,
        *,
        window_level: float,
        window_width: float,
        bands_hu: Any,
        scales: Any,
        reference_size: int,
        softness_hu: float,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.window_level, self.window_width = float(window_level), float(window_width)
        self.bands_hu = tuple((float(lo), float(hi)) for lo, hi in bands_hu)
        self.scales = tuple(int(k) for k in scales)
        self.reference_size = int(reference_size)
        self.softness_hu = float(softness_hu)
        self._sides = _box_sides(self.scales, self.reference_size, self.image_size)

    def call(self, inputs: Any) -> Any:
        hu = self.window_level - self.window_width / 2 + inputs * self.window_width
        t = self.softness_hu
        out = []
        for lo, hi in self.bands_hu:
            m = tf.sigmoid((hu - lo) / t) * tf.sigmoid((hi - hu) / t)
            out.append(m)
            out += [tf.nn.avg_pool2d(m, k, 1, "SAME") for k in self._sides]
        return tf.concat(out, axis=-1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (*input_shape[:3], len(self.bands_hu) * (1 + len(self.scales)))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "window_level": self.window_level,
            "window_width": self.window_width,
            "bands_hu": [list(b) for b in self.bands_hu],
            "scales": list(self.scales),
            "reference_size": self.reference_size,
            "softness_hu": self.softness_hu,
        }


@keras.utils.register_keras_serializable(package="covidct")
class AttenuationPool(keras.layers.Layer):  # type: ignore[misc]
    """``AttenuationMaps`` -> (B, bands * (1 + scales * (1 + levels))) log features: per band
    its area fraction, then per scale the largest box mean and the fraction above each level."""

    def __init__(
        self, *, n_bands: int, n_scales: int, levels: Any, log_floor: float, **kwargs: Any
    ) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.n_bands, self.n_scales = int(n_bands), int(n_scales)
        self.levels = tuple(float(v) for v in levels)
        self.log_floor = float(log_floor)

    def _per_pixel(self, maps: Any) -> list[tuple[str, Any]]:
        """Each feature before pooling: ("mean", a per-pixel map whose spatial mean it is) or
        ("max", the map whose maximum it is), in feature order."""
        per = 1 + self.n_scales
        out: list[tuple[str, Any]] = []
        for b in range(self.n_bands):
            out.append(("mean", maps[..., b * per]))
            for s in range(1, per):
                u = maps[..., b * per + s]
                out.append(("max", u))
                out += [("mean", tf.sigmoid((u - lv) / _LEVEL_SOFTNESS)) for lv in self.levels]
        return out

    def call(self, maps: Any) -> Any:
        pooled = [
            tf.reduce_mean(t, axis=[1, 2]) if how == "mean" else tf.reduce_max(t, axis=[1, 2])
            for how, t in self._per_pixel(maps)
        ]
        return tf.math.log(tf.stack(pooled, axis=-1) + self.log_floor)

    def pixel_maps(self, maps: Any) -> Any:
        """(B, S, S, features): for each feature that is a spatial mean, the map it averages
        (zeros for the maxima): how much each pixel adds to each feature."""
        return tf.stack(
            [t if how == "mean" else tf.zeros_like(t) for how, t in self._per_pixel(maps)], -1
        )

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], self.n_bands * (1 + self.n_scales * (1 + len(self.levels))))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "n_bands": self.n_bands,
            "n_scales": self.n_scales,
            "levels": list(self.levels),
            "log_floor": self.log_floor,
        }


def contribution_function(model: Any, size: int) -> Any:
    """A traced (1, S, S, 1) slice -> (S, S) map of how much each pixel raised the logit of a
    saved attenuation model (the head's per-region contributions, to first order).

    Most features are spatial means of per-pixel maps (``AttenuationPool.pixel_maps``), and the
    head is linear in their standardised logarithms, so d logit / d pixel-map value is
    w_f / (sd_f * (x_f + floor) * S^2) for feature f at this slice's value x_f; each pixel's
    contribution is that times its map value, summed over features; the positive part is shown.
    The maxima (one pixel each) are left out. Grad-CAM's spatially averaged gradients would
    spread the threshold features over every vessel and edge; this keeps them on the blobs.
    """
    norm, dense = model.get_layer("standardise"), model.get_layer("logit")
    pool = model.get_layer("features")
    lower = keras.Model(model.inputs, [model.get_layer("attenuation").output, pool.output])
    sd = tf.sqrt(tf.reshape(tf.cast(norm.variance, tf.float32), [-1]))
    slope = tf.reshape(dense.kernel, [-1]) / sd

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 1], tf.float32)])
    def contributions(x: Any) -> Any:
        maps, feats = lower(x, training=False)
        coef = slope * tf.exp(-feats[0])  # d logit / d (pooled value + floor)
        return tf.nn.relu(tf.reduce_sum(pool.pixel_maps(maps)[0] * coef, axis=-1))

    return contributions
