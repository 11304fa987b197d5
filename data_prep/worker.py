"""Prepare one job: read the scan, choose lung slices, window, resize, store as uint8.

Runs in worker processes; everything it needs arrives as arguments (no shared state), and it
returns an ``Outcome``: the public ``JobRecord`` (pseudonyms only) and, apart, the identifier
the patient pseudonym was made from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.atomic import atomic_save_npy
from data_prep.deid import Pseudonymizer
from data_prep.discover import Job, JobKind
from data_prep.errors import InputError
from data_prep.intensity import gray8_to_unit, to_uint8, window
from data_prep.prepared import PrepFolder
from data_prep.readers import DicomSeries, NiftiFile, read_scan
from data_prep.readers.images import read_image
from data_prep.records import JobRecord, JobStatus
from data_prep.settings import Crop, SliceSettings
from data_prep.slicing import (
    AIR_HU,
    LUNG_THRESHOLD_HU,
    Box,
    crop_to_box,
    gray_lung_box,
    hu_lung_box,
    lung_slice_range,
    mask_outside_lungs,
    otsu_threshold,
    resize_slices,
)
from data_prep.volume import IntensityKind, Volume


@dataclass(frozen=True)
class HuSlices:
    """The model slices of one HU scan and where they came from."""

    slices: np.ndarray  # uint8 (n, size, size)
    start: int  # first source slice kept
    stop: int  # one past the last source slice kept
    box: Box | None  # the in-plane crop (y0, y1, x0, x1), None when not cropped

    def crop(self, hu: np.ndarray) -> np.ndarray:
        """The same crop of source slices ``hu`` (n, h, w) at their own resolution."""
        return hu if self.box is None else crop_to_box(hu, self.box, fill=AIR_HU)


@dataclass(frozen=True)
class Outcome:
    """What preparing one scan gives, public and private apart.

    Attributes:
        record: the public record (``.state/jobs``, read by ``assemble``). No identifier.
        patient_key: the identifier the patient pseudonym was made from (a DICOM PatientID,
            a file name...); written only under ``private/``. None for a skipped scan.
    """

    record: JobRecord
    patient_key: str | None = None

    @classmethod
    def skipped(cls, reason: str) -> Outcome:
        return cls(JobRecord.skipped(reason))


def process_job(
    job: Job, *, settings: SliceSettings, out_dir: Path, pseudonymizer: Pseudonymizer
) -> Outcome:
    """Prepare one scan and write ``slices/<volume_id>.npy`` atomically."""
    try:
        if job.kind == JobKind.IMAGES:
            return _process_images(job, settings, out_dir, pseudonymizer)
        return _process_hu(job, settings, out_dir, pseudonymizer)
    except InputError as exc:
        return Outcome.skipped(str(exc))
    except MemoryError:
        return Outcome.skipped("scan too large for memory")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        # a third-party decoder's own failure on a corrupt file (pyo3 panics derive from
        # BaseException): one input is reported, the batch goes on
        detail = " ".join(str(exc).split())[:200]
        return Outcome.skipped(
            f"a decoder failed on it ({type(exc).__name__}: {detail}); it was left out"
        )


def hu_volume_slices(vol: Volume, settings: SliceSettings) -> HuSlices:
    """The training slices of a HU volume: lung range, lung crop, lung window, resize, uint8.

    The one definition of preprocessing, shared by ``covidct prepare`` and dashboard uploads.

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
    hu = vol.array[start:stop]
    box = hu_lung_box(hu, vol.spacing) if settings.crop is Crop.LUNGS else None
    if box is not None:
        hu = crop_to_box(hu, box, fill=AIR_HU)
    unit = window(hu, level=settings.window_level, width=settings.window_width)
    out = to_uint8(resize_slices(unit, size=settings.image_size))
    if settings.mask_outside_lungs:
        level, width = settings.window_level, settings.window_width
        threshold = float(
            to_uint8(window(np.array(LUNG_THRESHOLD_HU, np.float32), level=level, width=width))
        )
        fill = int(to_uint8(window(np.array(AIR_HU, np.float32), level=level, width=width)))
        out = np.stack([mask_outside_lungs(s, threshold=threshold, fill=fill) for s in out])
    return HuSlices(out, start, stop, box)


def image_slice(vol: Volume, settings: SliceSettings) -> np.ndarray:
    """The training slice of one 8-bit slice image (cropped, resized, uint8, (size, size))."""
    gray = vol.array
    if settings.crop is Crop.LUNGS:
        box = gray_lung_box(gray[0])
        if box is not None:  # the outside is filled with the image's darkest value (air)
            gray = crop_to_box(gray, box, fill=float(gray.min()))
    out = to_uint8(resize_slices(gray8_to_unit(gray), size=settings.image_size))[0]
    if settings.mask_outside_lungs:  # no HU: dark is below Otsu's threshold; air is the darkest
        out = mask_outside_lungs(out, threshold=otsu_threshold(out), fill=int(out.min()))
    return out


def _process_hu(job: Job, settings: SliceSettings, out_dir: Path, ps: Pseudonymizer) -> Outcome:
    source = (
        DicomSeries(job.headers)
        if job.kind == JobKind.DICOM
        else NiftiFile(Path(job.sources[0]), label=job.folder_label)
    )
    vol = read_scan(source)
    made = hu_volume_slices(vol, settings)
    slices, start, stop = made.slices, made.start, made.stop
    positions: list[float | None] = (
        [_finite_or_none(p) for p in vol.positions[start:stop]]
        if vol.positions is not None
        else [None] * (stop - start)
    )
    patient_key = job.patient_key or vol.patient_key
    volume_id = ps.volume(f"{job.kind}:{job.series_key}")
    atomic_save_npy(PrepFolder(out_dir).slice_file(volume_id), slices)
    record = JobRecord(
        status=JobStatus.OK,
        kind=vol.kind.value,
        volume_id=volume_id,
        patient_id=ps.patient(patient_key),
        study_id=ps.study(job.study_key) if job.study_key else "",
        folder_label=job.folder_label,
        n_slices=int(slices.shape[0]),
        source_slices=tuple(range(start, stop)),
        source_n_slices=vol.n_slices,
        positions_mm=tuple(positions),
        spacing_mm=tuple(_finite_or_none(round(float(s), 4)) for s in vol.spacing),
        flags=tuple(vol.flags),
        unit_basis=job.unit_basis.value,
    )
    return Outcome(record, patient_key)


def _process_images(job: Job, settings: SliceSettings, out_dir: Path, ps: Pseudonymizer) -> Outcome:
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
    atomic_save_npy(PrepFolder(out_dir).slice_file(volume_id), slices)
    record = JobRecord(
        status=JobStatus.OK,
        kind=IntensityKind.GRAY8.value,
        volume_id=volume_id,
        patient_id=ps.patient(job.patient_key),
        folder_label=job.folder_label,
        n_slices=int(slices.shape[0]),
        source_slices=tuple(used),
        source_n_slices=len(job.sources),
        positions_mm=(None,) * len(used),
        spacing_mm=(None, None, None),
        flags=tuple(flags),
        file_skips=tuple(bad),
        unit_basis=job.unit_basis.value,
    )
    return Outcome(record, job.patient_key)


def _finite_or_none(x: float) -> float | None:
    # JSON has no NaN: unknown geometry is null
    return float(x) if np.isfinite(x) else None
