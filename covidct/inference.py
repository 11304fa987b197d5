"""Inference on one scan with a trained run: per-slice probabilities, the scan-level call at the
run's validated threshold, and a Grad-CAM heat map of what drove the call on a slice.

Used by the dashboard; needs only the run folder (model.keras, metrics.json, run.json,
privacy_report.json), never the training data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covidct.evaluate import PatientScore, aggregate
from covidct.runs import Run, read_number
from data_prep.errors import CovidCTError
from data_prep.prepared import PrepFolder
from data_prep.settings import SliceSettings

__all__ = ["ModelBundle", "ScanPrediction", "grad_cam", "load_bundle", "predict_scan"]


class ModelLoadError(CovidCTError):
    """A run folder that cannot serve predictions (missing or unreadable files)."""


@dataclass
class ModelBundle:
    run_dir: Path
    model: Any  # keras.Model
    settings: SliceSettings  # how the training slices were made
    patient_score: PatientScore
    threshold: float  # scan-level operating threshold, chosen on validation
    epsilon: float
    privacy_unit: str
    test_patient_auc: float | None
    # traced once per loaded model and shared by every session (a server loads each model once):
    # eager calls of the scattering transform's many small ops cost 2-3x as much
    _forward: Any = field(default=None, init=False, repr=False, compare=False)
    _cam: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def explains_by_contributions(self) -> bool:
        """An attenuation model: its heat map is each pixel's contribution through the linear
        head (``features.attenuation.contribution_function``), not Grad-CAM."""
        return "attenuation" in {layer.name for layer in self.model.layers}

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits of a (n, size, size, 1) float32 batch in [0, 1], through one traced graph."""
        if self._forward is None:
            from covidct.tfsetup import tf

            size = self.settings.image_size
            model = self.model
            self._forward = tf.function(
                lambda t: model(t, training=False),
                input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)],
            )
        return np.asarray(self._forward(x))[:, 0]

    def warm_up(self) -> None:
        """Trace the prediction and Grad-CAM graphs now (a few seconds, once per model), so the
        first upload does not wait for it."""
        size = self.settings.image_size
        self.logits(np.zeros((1, size, size, 1), np.float32))
        self.cam(np.zeros((1, size, size, 1), np.float32))

    def cam(self, x: np.ndarray) -> np.ndarray:
        """Heat map (size, size) of one (1, size, size, 1) slice, unnormalised: the head's
        per-region contributions for an attenuation model, else Grad-CAM."""
        if self._cam is None:
            size = self.settings.image_size
            if self.explains_by_contributions:
                from covidct.features.attenuation import contribution_function

                self._cam = contribution_function(self.model, size)
            else:
                self._cam = _cam_function(self.model, size)
        return np.asarray(self._cam(x))


@dataclass
class ScanPrediction:
    slice_probs: np.ndarray  # (n,)
    probability: float  # the scan-level score (the run's patient aggregation)
    threshold: float
    positive: bool


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read {path}: {err}") from err


def load_bundle(run_dir: Path) -> ModelBundle:
    """Load a finished run for inference.

    Raises:
        ModelLoadError: not a finished run, or its files are unreadable.
    """
    import covidct.features  # noqa: F401  (registers the scattering layer of feature models)

    run = Run(run_dir)
    if not run.is_finished:
        raise ModelLoadError(f"{run_dir} is not a finished run (no {Run.META})")
    meta = _read(run.file(Run.META))
    metrics = _read(run.file(Run.METRICS))
    report = _read(run.file(Run.REPORT_JSON))
    raw = meta.get("slice_settings")
    if raw is None:  # runs from before slice settings were recorded: the dataset still says
        ds = PrepFolder(meta.get("prep", "")).dataset_file
        raw = _read(ds)["slices"] if ds.is_file() else None
    if raw is None:
        raise ModelLoadError(
            f"{run_dir}: how its training slices were made is unknown (no slice_settings in "
            f"{Run.META} and the prepared data is gone): retrain with this version"
        )
    try:
        settings = SliceSettings.from_recorded(raw)
        model = run.load_model()
    except (OSError, ValueError, TypeError) as err:
        raise ModelLoadError(f"cannot load the model of {run_dir}: {err}") from err
    eps = read_number(report.get("epsilon"))  # a report without one: not private
    return ModelBundle(
        run_dir=run_dir,
        model=model,
        settings=settings,
        patient_score=PatientScore(metrics.get("patient_score", "mean")),
        threshold=float(metrics["patient"]["threshold"]),
        epsilon=math.inf if eps is None else eps,
        privacy_unit=str(report.get("privacy_unit", "patient")),
        test_patient_auc=metrics["patient"].get("auc"),
    )


def _probs(bundle: ModelBundle, slices: np.ndarray, batch: int = 64) -> np.ndarray:
    out = np.empty(len(slices), np.float32)
    for s in range(0, len(slices), batch):
        x = slices[s : s + batch].astype(np.float32)[..., None] / 255.0
        logits = bundle.logits(x)
        out[s : s + len(x)] = 0.5 * (1.0 + np.tanh(logits / 2.0))  # sigmoid, no overflow
    return out


def predict_scan(bundle: ModelBundle, slices: np.ndarray) -> ScanPrediction:
    """Probabilities for (n, size, size) uint8 slices and the scan-level call."""
    size = bundle.settings.image_size
    if slices.ndim != 3 or slices.shape[1:] != (size, size):
        raise ValueError(f"expected (n, {size}, {size}) slices, got {slices.shape}")
    probs = _probs(bundle, slices)
    score = aggregate(probs, bundle.patient_score)
    return ScanPrediction(probs, score, bundle.threshold, score >= bundle.threshold)


def _last_feature_layer(model: Any) -> Any:
    """Where Grad-CAM looks: a feature model's transform maps (the heat map shows which
    positions' texture or attenuation features pushed the logit up), else the last layer with a
    spatial (H, W, C) output."""
    names = {layer.name for layer in model.layers}
    for fixed in ("scattering", "attenuation"):  # FixedTransform.name: the maps' layer
        if fixed in names:
            return model.get_layer(fixed)
    for layer in reversed(model.layers):
        shape = getattr(layer, "output_shape", None)
        if isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[1] > 1:
            return layer
    raise ValueError("the model has no spatial feature map for Grad-CAM")


def grad_cam(bundle: ModelBundle, slice_u8: np.ndarray) -> np.ndarray:
    """Where the COVID logit was raised on one slice: Grad-CAM (Selvaraju et al., ICCV 2017)
    at the last feature map, or, for an attenuation model, each pixel's contribution through
    the linear head (``features.attenuation.contribution_function``).

    Returns:
        (size, size) float32 in [0, 1].
    """
    cam = bundle.cam(slice_u8.astype(np.float32)[None, ..., None] / 255.0)
    top = float(cam.max())
    return (cam / top).astype(np.float32) if top > 0 else np.zeros_like(cam, np.float32)


def _cam_function(model: Any, size: int) -> Any:
    from covidct.tfsetup import keras, tf

    layer = _last_feature_layer(model)
    # two halves around the feature map, so the gradient is taken at the map itself (a tapped
    # model that returns an intermediate output gives no gradient through a custom layer's output)
    lower = keras.Model(model.inputs, layer.output)
    upper = keras.Model(layer.output, model.output)

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 1], tf.float32)])
    def cam(x: Any) -> Any:
        fmap = lower(x, training=False)
        with tf.GradientTape() as tape:
            tape.watch(fmap)
            target = upper(fmap, training=False)[:, 0]
        grads = tape.gradient(target, fmap)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        out = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))[0]
        return tf.image.resize(out[..., None], (size, size), method="bilinear")[..., 0]

    return cam
