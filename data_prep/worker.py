"""Prepare one job: read the scan, choose lung slices, window, resize, store as uint8.

Runs in worker processes; everything it needs arrives as arguments (no shared state), and it
returns a JSON-ready record that names no identifier (pseudonyms only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.atomic import atomic_save_npy
from data_prep.deid import Pseudonymizer
from data_prep.discover import Job, JobKind
from data_prep.errors import InputError
from data_prep.intensity import gray8_to_unit, to_uint8, window
from data_prep.readers.dicom import read_series
from data_prep.readers.images import read_image
from data_prep.readers.nifti import read_nifti
from data_prep.slicing import lung_slice_range, resize_slices
from data_prep.volume import Volume


@dataclass(frozen=True)
class SliceSettings:
    """How slices are made; stored in dataset.json and fixed for the life of a PREP folder."""

    image_size: int = 64
    window_level: float = -600.0
    window_width: float = 1500.0
    lung_only: bool = True
    min_lung_fraction: float = 0.02

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def process_job(
    job: Job, *, settings: SliceSettings, out_dir: Path, pseudonymizer: Pseudonymizer
) -> dict[str, Any]:
    """Prepare one scan and write ``slices/<volume_id>.npy`` atomically.

    Returns:
        A record: ``status`` "ok" with pseudonyms, slice geometry and flags, or "skipped" with a
        reason.  ``file_skips`` lists (source index, reason) for images that were left out.
    """
    try:
        if job.kind == JobKind.IMAGES:
            return _process_images(job, settings, out_dir, pseudonymizer)
        return _process_hu(job, settings, out_dir, pseudonymizer)
    except InputError as exc:
        return {"status": "skipped", "reason": str(exc), "file_skips": []}
    except MemoryError:
        return {"status": "skipped", "reason": "scan too large for memory", "file_skips": []}


def hu_volume_slices(vol: Volume, settings: SliceSettings) -> tuple[np.ndarray, tuple[int, int]]:
    """The training slices of a HU volume: lung range, lung window, resize, uint8.

    The one definition of preprocessing, shared by ``covidct prepare`` and dashboard uploads.

    Returns:
        (uint8 array (n, size, size), (start, stop) of the slices kept in the volume).

    Raises:
        InputError: no slice contains lung.
    """
    start, stop = 0, vol.n_slices
    if settings.lung_only:
        rng = lung_slice_range(vol.array, min_lung_fraction=settings.min_lung_fraction)
        if rng is None:
            raise InputError(
                f"no slice contains lung (checked {vol.n_slices} slices): is this a chest CT in HU?"
            )
        start, stop = rng
    unit = window(vol.array[start:stop], level=settings.window_level, width=settings.window_width)
    return to_uint8(resize_slices(unit, size=settings.image_size)), (start, stop)


def image_slice(vol: Volume, settings: SliceSettings) -> np.ndarray:
    """The training slice of one 8-bit slice image (resized, uint8, shape (size, size))."""
    return to_uint8(resize_slices(gray8_to_unit(vol.array), size=settings.image_size))[0]


def _process_hu(
    job: Job, settings: SliceSettings, out_dir: Path, ps: Pseudonymizer
) -> dict[str, Any]:
    if job.kind == JobKind.DICOM:
        vol = read_series(job.headers)
    else:
        vol = read_nifti(Path(job.sources[0]), label=job.folder_label)
    slices, (start, stop) = hu_volume_slices(vol, settings)
    positions: list[float | None] = (
        [_finite_or_none(p) for p in vol.positions[start:stop]]
        if vol.positions is not None
        else [None] * (stop - start)
    )
    patient_key = job.patient_key or vol.patient_key
    volume_id = ps.volume(f"{job.kind}:{job.series_key}")
    atomic_save_npy(out_dir / "slices" / f"{volume_id}.npy", slices)
    return {
        "status": "ok",
        "kind": vol.kind.value,
        "volume_id": volume_id,
        "patient_id": ps.patient(patient_key),
        "study_id": ps.study(job.study_key) if job.study_key else "",
        "folder_label": job.folder_label,
        "n_slices": int(slices.shape[0]),
        "source_slices": list(range(start, stop)),
        "source_n_slices": vol.n_slices,
        "positions_mm": positions,
        "spacing_mm": [_finite_or_none(round(float(s), 4)) for s in vol.spacing],
        "flags": vol.flags,
        "file_skips": [],
        "_private_patient_key": patient_key,
    }


def _process_images(
    job: Job, settings: SliceSettings, out_dir: Path, ps: Pseudonymizer
) -> dict[str, Any]:
    unit_slices: list[np.ndarray] = []
    used: list[int] = []
    flags: list[str] = []
    bad: list[tuple[int, str]] = []
    for i, src in enumerate(job.sources):
        try:
            v = read_image(Path(src), patient_key=job.patient_key, label=job.folder_label)
        except InputError as exc:
            bad.append((i, str(exc)))
            continue
        unit_slices.append(image_slice(v, settings))
        used.append(i)
        flags.extend(f for f in v.flags if f not in flags)
    if not unit_slices:
        if len(bad) == 1:
            raise InputError(bad[0][1])
        raise InputError(f"none of the {len(job.sources)} images could be read ({bad[0][1]})")
    flags.insert(0, "8-bit slice images: intensities are display values, not HU")
    slices = np.stack(unit_slices)
    volume_id = ps.volume(f"{job.kind}:{job.series_key}")
    atomic_save_npy(out_dir / "slices" / f"{volume_id}.npy", slices)
    return {
        "status": "ok",
        "kind": "gray8",
        "volume_id": volume_id,
        "patient_id": ps.patient(job.patient_key),
        "study_id": "",
        "folder_label": job.folder_label,
        "n_slices": int(slices.shape[0]),
        "source_slices": used,
        "source_n_slices": len(job.sources),
        "positions_mm": [None] * len(used),
        "spacing_mm": [None, None, None],
        "flags": flags,
        "file_skips": bad,
        "_private_patient_key": job.patient_key,
    }


def _finite_or_none(x: float) -> float | None:
    # JSON has no NaN: unknown geometry is null
    return float(x) if np.isfinite(x) else None
