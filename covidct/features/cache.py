"""The feature cache of a prepared folder: every slice's fixed features, computed once.

Layout: ``PREP/features/<transform>-<key>/<volume>.npy`` holds float32 (n, features)
for the n slices of ``PREP/slices/<volume>.npy`` in the same order, and ``spec.json`` says what
was computed (the transform's parameters, kymatio's version and the slice settings; ``key``
hashes exactly these). No identifier goes in: volume names are the pseudonyms prepare already
uses, and the features are a fixed function of the stored slices.

Every shard is written atomically (a temporary file, then a rename), so an interrupted
computation resumes where it stopped and a concurrent run (a sweep) never reads half a shard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.data.units import DataError, SliceStore, slice_settings
from covidct.features.transform import FixedTransform, cache_key, window_of
from data_prep.atomic import atomic_save_npy, atomic_write_json
from data_prep.prepared import PrepFolder

__all__ = [
    "CacheStats",
    "FeatureStore",
    "check_slices",
    "ensure_features",
    "training_features",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheStats:
    folder: Path
    computed_volumes: int
    reused_volumes: int
    slices_computed: int
    seconds: float


def cache_folder(prep: Path, spec: FixedTransform) -> Path:
    return PrepFolder(prep).features_dir / f"{spec.name}-{cache_key(spec, slice_settings(prep))}"


def check_slices(spec: FixedTransform, prep: Path, model: str) -> str | None:
    """Refuse slices without HU for a transform that reads HU (``ConfigError``); return a note
    when the slices were not masked to the lungs (their body wall's edges fall in its bands)."""
    from covidct.config import ConfigError
    from covidct.data.units import slice_kinds

    if not spec.needs_hu:
        return None
    images = slice_kinds(prep).get("gray8", 0)
    if images:
        raise ConfigError(
            f"model {model!r} measures attenuation in HU, but {images} slices of {prep} come "
            "from images without HU (PNG/JPEG folders): train with --set "
            "train.model=scattering (texture features that need no HU), or prepare DICOM/NIfTI"
        )
    if not slice_settings(prep).get("mask_outside_lungs", False):
        return (
            f"note: {prep} was prepared without prepare.slices.mask_outside_lungs, so the body "
            f"wall's edges fall in the attenuation bands of model {model!r}; it learns better "
            "from masked slices (prepare again with the default settings)"
        )
    return None


def _shard(folder: Path, slice_file: str) -> Path:
    return folder / Path(slice_file).name


def ensure_features(
    prep: Path,
    spec: FixedTransform,
    slice_files: Sequence[str],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> CacheStats:
    """Compute the features of every slice shard in ``slice_files`` not yet cached.

    Args:
        prep: the prepared folder.
        spec: the transform.
        slice_files: manifest file names (``slices/<volume>.npy``).
        progress: called with (volumes done, volumes to do) after each computed volume.

    Raises:
        DataError: a slice shard is unreadable, or its size does not fit the transform.
    """
    from covidct.features.transform import compute_features

    t0 = time.perf_counter()
    settings = slice_settings(prep)
    size = int(settings["image_size"])  # type: ignore[call-overload]
    try:
        spec.check(size)
    except ValueError as exc:
        raise DataError(f"{prep}: {exc}") from exc
    folder = cache_folder(prep, spec)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "spec.json").is_file():
        record = {**spec.record(settings), "dtype": "float32", "layout": "(n, features)"}
        atomic_write_json(folder / "spec.json", record)
    files = sorted(set(slice_files))
    store = SliceStore(prep, max_open=4)
    todo = [f for f in files if not _current(_shard(folder, f), len(store.array(f)), spec)]
    n_slices = 0
    for done, f in enumerate(todo, 1):
        slices = np.asarray(store.array(f))
        feats = compute_features(slices, spec, window_of(settings))
        atomic_save_npy(_shard(folder, f), feats)
        n_slices += len(slices)
        if progress is not None:
            progress(done, len(todo))
    stats = CacheStats(
        folder, len(todo), len(files) - len(todo), n_slices, time.perf_counter() - t0
    )
    logger.info(
        "features %s: %d volumes computed, %d reused", folder, len(todo), stats.reused_volumes
    )
    return stats


def _current(shard: Path, n_slices: int, spec: FixedTransform) -> bool:
    """The shard exists and holds one row of features per slice of its scan (a scan prepared
    again with other slices gets its features again)."""
    if not shard.is_file():
        return False
    try:
        return np.load(shard, mmap_mode="r").shape == (n_slices, spec.size)
    except (OSError, ValueError):
        return False


class FeatureStore:
    """Reads cached features like ``SliceStore`` reads slices: ``get(slice_file, index)``.

    Shards stay in memory once read (float32; 1.6 kB per slice for scattering at J=2, L=8:
    80 MB for 50,000 slices), because full-batch training reads every training slice at every step.
    """

    def __init__(self, prep: Path, spec: FixedTransform) -> None:
        self.prep = prep
        self.spec = spec
        self.folder = cache_folder(prep, spec)
        self._open: dict[str, np.ndarray] = {}

    def array(self, file: str) -> np.ndarray:
        arr = self._open.get(file)
        if arr is None:
            path = _shard(self.folder, file)
            try:
                arr = np.load(path).astype(np.float32)
            except (OSError, ValueError) as exc:
                raise DataError(
                    f"cannot read cached features {path}: {exc}; delete {self.folder} and train "
                    "again (the features are recomputed)"
                ) from exc
            if arr.ndim != 2 or arr.shape[1] != self.spec.size:
                raise DataError(
                    f"cached features {path} have shape {arr.shape}, expected (n, "
                    f"{self.spec.size}): delete {self.folder} and train again"
                )
            self._open[file] = arr
        return arr

    def get(self, file: str, index: int) -> np.ndarray:
        return self.array(file)[index]

    def inputs(self, refs: Sequence[tuple[str, int]]) -> np.ndarray:
        """The model input for these slices: (n, features) float32."""
        return np.stack([self.get(f, i) for f, i in refs])


def feature_stats(store: FeatureStore, refs: Sequence[tuple[str, int]]) -> tuple[Any, Any]:
    """Per-feature mean and variance over the slices ``refs``."""
    if not refs:
        raise DataError("no slices to estimate the feature scaling from")
    x = store.inputs(refs).astype(np.float64)
    # a floor on the spread (standard deviation 0.03 on the log scale): a feature nearly constant
    # in these slices must not become a huge number on a slice where it is not
    return x.mean(0).astype(np.float32), np.maximum(x.var(0), 1e-3).astype(np.float32)


def training_features(
    prep: Path,
    spec: FixedTransform,
    splits: Sequence[Any],
    validation: Any,
    *,
    say: Callable[[str], None],
) -> tuple[FeatureStore, Any, Any]:
    """Cached features of every slice of ``splits`` (``covidct.data.units.Units``; computed on
    first use, then reused by every run and sweep on ``prep``) and the standardisation
    constants, estimated from the ``validation`` patients only, never the training patients."""
    files = {f for units in splits for refs in units.slices for f, _ in refs}
    marks: set[int] = set()

    def progress(done: int, total: int) -> None:
        tenth = 10 * done // total
        if tenth not in marks and tenth in (2, 5, 8):
            marks.add(tenth)
            say(f"features: {done}/{total} scans")

    say(f"features: {spec.describe()} of every slice, cached in the prepared folder")
    stats = ensure_features(prep, spec, sorted(files), progress=progress)
    say(
        f"features: {stats.slices_computed} slices of {stats.computed_volumes} scans computed in "
        f"{stats.seconds:.0f} s, {stats.reused_volumes} scans reused from {stats.folder}"
    )
    store = FeatureStore(prep, spec)
    mean, variance = feature_stats(store, [r for refs in validation.slices for r in refs])
    return store, mean, variance
