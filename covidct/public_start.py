"""Public starting weights: what ``covidct pretrain`` exports, and the checks a private run
makes before it starts from them (``covidct.pretrain`` is the command).

``covidct pretrain --data PUBLIC_PREP --out OUT`` trains WITHOUT differential privacy on a
prepared dataset the user declares public (a downloaded public COVID CT collection, a synthetic
cohort) and writes two files (``export``):

- ``OUT.weights.h5``: the trainable weights (for a scattering model, its head);
- ``OUT.json``: their provenance: the weights' SHA-256, the model and slice settings, the public
  dataset's manifest SHA-256 and its number of patients, the SHA-256 of every prepared scan,
  the public test AUC, and for a feature model the standardisation constants of the public
  features (public statistics, so using them costs no privacy).

A private run starts from them with ``train.initial_weights=OUT.weights.h5``. ``load_start``
checks the file against its provenance before anything is counted: the same SHA-256, the same
model and image size, and no prepared scan of the private dataset among the public ones
(byte-identical prepared files: this catches pretraining on the very dataset one then trains
privately, not the same patients prepared with other settings). Every run that uses the weights
records their SHA-256 and the public manifest's in ``run.json``, and its privacy report says the
guarantee does not cover the public data.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.data.units import DataError, image_size, slice_settings
from covidct.errors import ConfigError
from covidct.runs import Run, read_json
from covidct.train_config import TrainConfig
from data_prep.atomic import atomic_write_json
from data_prep.prepared import PrepFolder

FORMAT = "covidct-public-start/1"
WEIGHTS_SUFFIX = ".weights.h5"

__all__ = [
    "FORMAT",
    "PublicStart",
    "export",
    "load_start",
    "provenance_path",
    "weights_path",
]


def weights_path(out: Path) -> Path:
    """``OUT`` -> ``OUT.weights.h5`` (``OUT`` may already end with it)."""
    name = out.name
    return out if name.endswith(WEIGHTS_SUFFIX) else out.with_name(name + WEIGHTS_SUFFIX)


def provenance_path(weights: Path) -> Path:
    """The provenance record beside a weights file: ``OUT.weights.h5`` -> ``OUT.json``."""
    name = weights.name
    stem = name[: -len(WEIGHTS_SUFFIX)] if name.endswith(WEIGHTS_SUFFIX) else weights.stem
    return weights.with_name(stem + ".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _scan_hashes(prep: Path) -> set[str]:
    """SHA-256 of every prepared scan file (``slices/*.npy``) of ``prep``."""
    return {_sha256(p) for p in PrepFolder(prep).slice_files()}


def _public_data(prep: Path) -> dict[str, Any]:
    folder = PrepFolder(prep)
    meta = folder.dataset()
    return {
        "manifest_sha256": _sha256(folder.manifest_file),
        "patients": meta.get("patients"),
        "slices": meta.get("slices_total"),
        "slice_settings": meta.get("slices"),
    }


@dataclass(frozen=True)
class PublicStart:
    """Weights a private run starts from, with what is known of the data they came from."""

    weights: Path
    sha256: str
    provenance: dict[str, Any] | None  # OUT.json, None when there is none beside the weights

    @property
    def public_data(self) -> dict[str, Any] | None:
        """The public dataset's record (manifest SHA-256, patients), when the provenance has it."""
        return (self.provenance or {}).get("public_data")

    @property
    def standardise(self) -> tuple[np.ndarray, np.ndarray] | None:
        """A feature head's standardisation constants, estimated on the public features."""
        std = (self.provenance or {}).get("standardise")
        if not std:
            return None
        return np.asarray(std["mean"], np.float32), np.asarray(std["variance"], np.float32)

    def record(self) -> dict[str, Any]:
        """What ``run.json`` says of the start (no private data in it)."""
        public = self.public_data
        return {
            "file": str(self.weights),
            "sha256": self.sha256,
            "provenance": str(provenance_path(self.weights)) if self.provenance else None,
            "public_manifest_sha256": public.get("manifest_sha256") if public else None,
            "public_patients": public.get("patients") if public else None,
        }

    def note(self) -> str:
        """The privacy report's sentence on the start."""
        head = f"Training started from the weights in {self.weights.name} (SHA-256 {self.sha256}). "
        public = self.public_data
        if public:
            source = (
                f"They were made by covidct pretrain WITHOUT differential privacy from a dataset "
                f"declared public ({public.get('patients')} patients, manifest SHA-256 "
                f"{public.get('manifest_sha256')}); no prepared scan of this run's dataset is "
                "among its scans (checked file by file). "
            )
        elif self.provenance:
            source = (
                f"Their provenance record ({provenance_path(self.weights).name}) names the data "
                f"as: {self.provenance.get('data', 'not stated')}; it has no manifest hash. "
            )
        else:
            source = (
                "No provenance record lies beside them: covidct cannot say what data made them. "
            )
        return (
            head
            + source
            + "The guarantee covers what this run learned from its training patients; it says "
            "nothing about the data the weights were made from, which must itself be public (or "
            "covered by its own guarantee)."
        )


def load_start(weights: Path, *, config: TrainConfig, prep: Path) -> PublicStart:
    """Check a starting-weights file against its provenance and against ``prep``.

    Raises:
        DataError: missing or unreadable file or provenance, a SHA-256 that does not match, or
            prepared scans of ``prep`` among the public ones.
        ConfigError: the weights are of another model or image size.
    """
    from covidct.models import feature_spec

    if not weights.is_file():
        raise DataError(
            f"initial weights {weights} not found: give the path of a weights file of the same "
            "model and image size (train.initial_weights; covidct pretrain makes one)"
        )
    sha = _sha256(weights)
    prov_file = provenance_path(weights)
    prov: dict[str, Any] | None = None
    if prov_file.is_file():
        try:
            prov = read_json(prov_file.parent, prov_file.name)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"cannot read {prov_file} ({exc}): restore it or remake the weights with "
                "covidct pretrain"
            ) from exc
        if not isinstance(prov, dict):
            raise DataError(
                f"{prov_file} is not a provenance record: remake it with covidct pretrain"
            )
    fspec = feature_spec(config.model)
    if prov is None:
        if fspec is not None:
            raise DataError(
                f"{weights} has no provenance record ({prov_file.name}) beside it: a "
                f"{config.model!r} head needs the standardisation constants covidct pretrain "
                "writes there; remake the weights with covidct pretrain"
            )
        return PublicStart(weights, sha, None)
    if prov.get("sha256") not in (None, sha):
        raise DataError(
            f"{weights} does not match its provenance {prov_file.name} (SHA-256 {sha[:16]}..., "
            f"recorded {str(prov['sha256'])[:16]}...): the file changed after it was made; "
            "remake it with covidct pretrain"
        )
    model = prov.get("model") or prov.get("config", {}).get("train", {}).get("model")
    if model and model != config.model:
        raise ConfigError(
            f"{weights} holds weights of model {model!r}, this run trains {config.model!r}: "
            f"set train.model={model} or pretrain the model you train"
        )
    size = prov.get("image_size") or prov.get("config", {}).get("prepare", {}).get(
        "slices", {}
    ).get("image_size")
    if size and int(size) != image_size(prep):
        raise ConfigError(
            f"{weights} was trained on {size} px slices, {prep} has {image_size(prep)} px: "
            "prepare both datasets at the same image_size"
        )
    if fspec is not None and prov.get("features") != fspec.record(slice_settings(prep)):
        raise ConfigError(
            f"{weights} was trained on other features ({prov.get('features')}) than this run "
            f"computes ({fspec.record(slice_settings(prep))}): prepare the public and private "
            "data with the same slice settings and pretrain the same model"
        )
    public_scans = set(prov.get("scan_sha256") or ())
    if public_scans:
        shared = public_scans & _scan_hashes(prep)
        if shared:
            raise DataError(
                f"{len(shared)} prepared scan(s) of {prep} are byte for byte among the scans "
                f"{weights.name} was pretrained on without DP: the guarantee would not cover "
                "those patients; pretrain on data disjoint from the private dataset"
            )
    return PublicStart(weights, sha, prov)


def export(run: Path, public_prep: Path, out: Path, *, config: TrainConfig) -> PublicStart:
    """Write ``OUT.weights.h5`` and ``OUT.json`` from a finished non-private run on
    ``public_prep`` (each file atomically; the weights first, the record that names them last)."""
    from covidct.config import to_dict
    from covidct.models import build_head, feature_spec

    finished = Run(run)  # Run.load_model registers the scattering layer
    meta, metrics = finished.meta(), finished.metrics()
    model = finished.load_model()
    fspec = feature_spec(config.model)
    standardise = None
    if fspec is not None:
        norm = model.get_layer("standardise")
        mean = np.asarray(norm.input_mean, np.float32).reshape(-1)
        variance = np.asarray(norm.input_variance, np.float32).reshape(-1)
        head = build_head(config.model, mean=mean, variance=variance)
        head.get_layer("logit").set_weights(model.get_layer("logit").get_weights())
        model = head
        standardise = {"mean": mean.tolist(), "variance": variance.tolist()}
    weights = weights_path(out)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f".tmp.{weights.name}")  # the suffix picks Keras' weights format
    model.save_weights(str(tmp))
    os.replace(tmp, weights)
    auc = metrics.get("patient", {}).get("auc")
    provenance = {
        "format": FORMAT,
        "what": "starting weights made by covidct pretrain, WITHOUT differential privacy",
        "data": "declared public by whoever ran covidct pretrain",
        "model": config.model,
        "image_size": meta["image_size"],
        "features": fspec.record(slice_settings(public_prep)) if fspec is not None else None,
        "standardise": standardise,
        "public_data": _public_data(public_prep),
        "scan_sha256": sorted(_scan_hashes(public_prep)),
        "public_test_patient_auc": auc if auc is None or math.isfinite(auc) else None,
        "train": {k: v for k, v in to_dict(config).items() if k != "initial_weights"},
        "weights_file": weights.name,
        "sha256": _sha256(weights),
    }
    atomic_write_json(provenance_path(weights), provenance)
    return PublicStart(weights, provenance["sha256"], provenance)
