"""Privacy units over a prepared dataset, and the samplers that choose them each step.

A unit is a patient (default) or a single slice.  Slices are read lazily from the per-volume
uint8 shards (memory-mapped), so a 50,000-slice dataset is never loaded whole.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covidct.privacy.secret import RunSecret
from data_prep.deid import UnitBasis
from data_prep.errors import CovidCTError
from data_prep.manifest import read_manifest
from data_prep.prepared import PrepFolder


class PrivacyUnit(enum.Enum):
    PATIENT = "patient"
    SLICE = "slice"


class DataError(CovidCTError):
    """The prepared dataset is missing, incomplete or unusable for training."""


class SliceStore:
    """Reads slices from ``PREP/slices/*.npy`` through a small cache of memory maps."""

    def __init__(self, prep: Path, *, max_open: int = 256) -> None:
        self.prep = prep
        self.max_open = max_open
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()

    def array(self, file: str) -> np.ndarray:
        arr = self._open.get(file)
        if arr is None:
            path = self.prep / file
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read {path}: {exc}; re-run covidct prepare") from exc
            self._open[file] = arr
            if len(self._open) > self.max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(file)
        return arr

    def get(self, file: str, index: int) -> np.ndarray:
        return np.asarray(self.array(file)[index])

    def inputs(self, refs: Sequence[tuple[str, int]]) -> np.ndarray:
        """The model input for these slices: (n, size, size, 1) float32 in [0, 1]."""
        return np.stack([self.get(f, i) for f, i in refs]).astype(np.float32)[..., None] / 255.0


@dataclass
class Units:
    """The privacy units of one split.

    Attributes:
        ids: unit ids (patient pseudonyms, or patient/volume/index for slice units).
        patients: the patient of each unit (for slice units, many units share one).
        labels: (n_units,) 0/1.
        slices: per unit, its (file, index) slice references.
        bases: per unit, how prepare decided its patient (``data_prep.deid.UnitBasis`` value):
            a DICOM PatientID, or a fallback (a study, a file, a folder, an image).
    """

    ids: list[str]
    patients: list[str]
    labels: np.ndarray
    slices: list[list[tuple[str, int]]]
    bases: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def image_size(prep: Path) -> int:
    """Slice size recorded by ``covidct prepare``."""
    try:
        return int(slice_settings(prep)["image_size"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{prep} is not a prepared dataset ({PrepFolder.DATASET} has no slice size: {exc}); "
            "run covidct prepare first"
        ) from exc


def slice_settings(prep: Path) -> dict[str, object]:
    """The slice settings recorded by ``covidct prepare`` (size, window, lung range)."""
    try:
        return dict(PrepFolder(prep).dataset()["slices"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{prep} is not a prepared dataset ({PrepFolder.DATASET} unreadable: {exc}); "
            "run covidct prepare first"
        ) from exc


def slice_kinds(prep: Path) -> dict[str, int]:
    """How many of the prepared slices are HU (``hu``) or plain images (``gray8``)."""
    manifest = PrepFolder(prep).manifest_file
    if not manifest.exists():
        raise DataError(f"{manifest} not found: run covidct prepare first")
    kinds: dict[str, int] = {}
    for r in read_manifest(manifest):
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    return kinds


def load_units(prep: Path, split: str, unit: PrivacyUnit) -> Units:
    """Group a split's slices into privacy units, in a stable order.

    Args:
        prep: the PREP folder.
        split: train, validation or test.
        unit: patient or slice.
    """
    manifest = PrepFolder(prep).manifest_file
    if not manifest.exists():
        raise DataError(f"{manifest} not found: run covidct prepare first")
    rows = [r for r in read_manifest(manifest) if r.split == split]
    by_patient: dict[str, list[tuple[str, int]]] = {}
    label_of: dict[str, int] = {}
    bases_of: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r.patient_id, []).append((r.file, r.index))
        label_of[r.patient_id] = r.label
        bases_of.setdefault(r.patient_id, set()).add(r.unit_basis)
    ids: list[str] = []
    patients: list[str] = []
    labels: list[int] = []
    slices: list[list[tuple[str, int]]] = []
    bases: list[str] = []
    for pid in sorted(by_patient):
        basis = _weakest(bases_of[pid])
        if unit is PrivacyUnit.PATIENT:
            ids.append(pid)
            patients.append(pid)
            labels.append(label_of[pid])
            slices.append(by_patient[pid])
            bases.append(basis)
        else:
            for ref in by_patient[pid]:
                ids.append(f"{pid}/{ref[0]}/{ref[1]}")
                patients.append(pid)
                labels.append(label_of[pid])
                slices.append([ref])
                bases.append(basis)
    return Units(
        ids=ids,
        patients=patients,
        labels=np.asarray(labels, np.float32),
        slices=slices,
        bases=bases,
    )


def _weakest(bases: set[str]) -> str:
    """A patient made of several scans is a person only if every scan names one by PatientID."""
    fallbacks = sorted(b for b in bases if b != UnitBasis.DICOM_PATIENT_ID.value)
    return fallbacks[0] if fallbacks else UnitBasis.DICOM_PATIENT_ID.value


class PoissonSampler:
    """Each unit joins each step's batch independently with probability q.

    The draw comes from the run's secret key (``covidct.privacy.secret``), never from a stored
    seed: knowing which units a step used removes the amplification by subsampling that the
    accountant counts on. Every worker holding the same key draws the same global sample.
    """

    def __init__(self, n_units: int, *, sampling_rate: float, secret: RunSecret) -> None:
        if not 0 < sampling_rate <= 1:
            raise ValueError(f"sampling rate must be in (0, 1], got {sampling_rate}")
        self.n_units = n_units
        self.q = sampling_rate
        self._secret = secret

    def sample(self, step: int) -> np.ndarray:
        return self._secret.poisson_sample(step, n_units=self.n_units, sampling_rate=self.q)


class ShuffledSampler:
    """Fixed-size batches from a fresh secret permutation each epoch (no Poisson guarantee)."""

    def __init__(self, n_units: int, *, batch_size: int, secret: RunSecret) -> None:
        self.n_units = n_units
        self.batch_size = batch_size
        self._secret = secret
        self.steps_per_epoch = max(1, n_units // batch_size)

    def sample(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = self._secret.permutation(epoch, self.n_units)
        return np.sort(perm[i * self.batch_size : (i + 1) * self.batch_size])


def unit_chunks(
    units: Units,
    chosen: np.ndarray,
    store: SliceStore,
    *,
    k: int,
    chunk: int,
    rng: np.random.Generator,
):
    """Yield fixed-shape arrays (x, mask, y, present) covering the chosen units.

    x is (chunk, k, H, W, 1) float32 in [0, 1].  A unit with more than k slices contributes a
    random subset of k (fresh each time it is sampled); fewer than k are masked.  The last chunk is
    padded with ``present = 0`` units so every call has the same shape (no retracing).
    """
    size = store.array(units.slices[0][0][0]).shape[-1] if len(units) else 0
    for start in range(0, len(chosen), chunk):
        part = chosen[start : start + chunk]
        x = np.zeros((chunk, k, size, size, 1), np.float32)
        mask = np.zeros((chunk, k), np.float32)
        y = np.zeros(chunk, np.float32)
        present = np.zeros(chunk, np.float32)
        for j, u in enumerate(part):
            refs = units.slices[int(u)]
            if len(refs) > k:
                refs = [refs[i] for i in np.sort(rng.choice(len(refs), size=k, replace=False))]
            for s, (file, index) in enumerate(refs):
                x[j, s, :, :, 0] = store.get(file, index)
                mask[j, s] = 1.0
            y[j] = units.labels[int(u)]
            present[j] = 1.0
        x /= 255.0
        yield x, mask, y, present
