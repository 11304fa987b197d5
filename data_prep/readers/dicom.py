"""DICOM: find CT series in a tree, choose the axial one of each study, read it as a HU volume.

Two steps so that a tree of thousands of files is grouped before any pixel is decoded:
``probe_file`` reads one header (pixels deferred), ``read_series`` decodes the chosen series.
Identifiers read here (PatientID, UIDs) stay in memory and are only ever hashed downstream.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale

from data_prep.errors import (
    GeometryError,
    NotAnImageError,
    PixelDecodeError,
)
from data_prep.volume import IntensityKind, Volume, canonicalize, spacing_from_affine

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"

# Below this angle between the slice normal and the slice-stacking direction, tilt is rounding.
TILT_TOLERANCE_DEG = 1.0


@dataclass(frozen=True)
class DicomHeader:
    """What grouping and series selection need from one file. PRIVATE: holds identifiers."""

    path: str
    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    sop_class: str
    image_type: tuple[str, ...]
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    instance_number: int | None
    rows: int
    columns: int
    frames: int

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type

    def normal(self) -> np.ndarray | None:
        if self.orientation is None or len(self.orientation) != 6:
            return None
        row = np.asarray(self.orientation[:3])
        col = np.asarray(self.orientation[3:])
        n = np.cross(row, col)
        norm = float(np.linalg.norm(n))
        return n / norm if norm > 1e-6 else None


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def probe_file(path: Path) -> DicomHeader:
    """Read one file's header, leaving the pixel data unread.

    Args:
        path: a file that may be DICOM (any name, with or without extension).

    Returns:
        The header fields used to group, order and choose series.

    Raises:
        NotAnImageError: not DICOM, a DICOMDIR index, or DICOM without an image.
    """
    try:
        ds = pydicom.dcmread(path, defer_size="2 KB")
    except InvalidDicomError:
        # Files without the 128-byte preamble are still DICOM sometimes; force=True "reads"
        # anything, so the result is only accepted with the elements every image must have.
        try:
            ds = pydicom.dcmread(path, defer_size="2 KB", force=True)
        except Exception as exc:
            raise NotAnImageError(f"not a DICOM file ({type(exc).__name__})") from exc
        if not all(k in ds for k in ("SOPClassUID", "Rows", "Columns", "PixelData")):
            raise NotAnImageError(
                "not a DICOM file (no DICM preamble and no image elements)"
            ) from None
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        raise NotAnImageError(f"unreadable DICOM header ({type(exc).__name__}: {detail})") from exc

    meta = getattr(ds, "file_meta", None)
    media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if media_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise NotAnImageError(
            "DICOMDIR index file, not an image; the files it lists are read directly"
        )
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise NotAnImageError(
            f"DICOM object without pixel data (modality {ds.get('Modality', 'unknown')})"
        )
    try:
        instance = int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None
    except (TypeError, ValueError):
        instance = None
    position = _floats(ds.get("ImagePositionPatient"), 3)
    return DicomHeader(
        path=str(path),
        patient_id=str(ds.get("PatientID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        series_uid=str(ds.get("SeriesInstanceUID", "") or f"no-series:{path}"),
        modality=str(ds.get("Modality", "") or "").upper(),
        sop_class=str(ds.get("SOPClassUID", "") or media_class),
        image_type=tuple(str(v).strip().upper() for v in (ds.get("ImageType") or ())),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        position=position,  # type: ignore[arg-type]
        instance_number=instance,
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
    )


def series_rejection(headers: Sequence[DicomHeader]) -> str | None:
    """Why a series is not an axial CT volume, or None when it is a candidate.

    Args:
        headers: all files of one series.
    """
    h = headers[0]
    if h.modality != "CT":
        return f"modality {h.modality or 'missing'}, not CT"
    if h.sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        return "secondary capture (a screenshot), not CT slices"
    if h.sop_class not in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE):
        return f"SOP class {h.sop_class} is not CT Image Storage"
    if any(x.is_localizer for x in headers):
        return "localizer (scout) series"
    normal = h.normal()
    if normal is not None and abs(float(normal[2])) < 0.8:
        return "not axial (coronal or sagittal reconstruction)"
    if h.frames > 1:
        return "multi-frame (enhanced) CT is not supported yet: export as single-frame slices"
    return None


def choose_series(candidates: dict[str, list[DicomHeader]]) -> str:
    """Pick the axial CT series of one study: the one with the most slices (finest coverage).

    Args:
        candidates: series UID -> headers, all already accepted by ``series_rejection``.
    """
    return max(candidates, key=lambda uid: (len(candidates[uid]), uid))


def _decode(path: str) -> tuple[np.ndarray, pydicom.Dataset]:
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        hu = apply_rescale(pixels, ds)
    except Exception as exc:
        detail = " ".join(str(exc).split())  # decoders report one line per plugin: keep one line
        raise PixelDecodeError(
            f"pixel data cannot be decoded ({type(exc).__name__}: {detail[:300]})"
        ) from exc
    if hu.ndim != 2:
        raise PixelDecodeError(f"expected one 2D grayscale frame, got pixel array shape {hu.shape}")
    return hu.astype(np.float32, copy=False), ds


def read_series(headers: Sequence[DicomHeader], *, max_bad_fraction: float = 0.1) -> Volume:
    """Decode one series into a canonical HU volume, reporting geometry problems as flags.

    Slices are ordered by position along the slice normal (DICOM PS3.3 C.7.6.2.1.1), not by file
    name or InstanceNumber, which scanners and anonymisers do not keep in order.

    Args:
        headers: the files of one series (from ``probe_file``).
        max_bad_fraction: the series is rejected when more of its slices than this fail to decode.

    Raises:
        PixelDecodeError: too many slices cannot be decoded.
        GeometryError: slices disagree in size or orientation.
    """
    flags: list[str] = []
    first = headers[0]
    sizes = {(h.rows, h.columns) for h in headers}
    if len(sizes) > 1:
        raise GeometryError(f"slices of one series have different sizes {sorted(sizes)}")
    orientations = {tuple(round(v, 3) for v in h.orientation) for h in headers if h.orientation}
    if len(orientations) > 1:
        raise GeometryError("slices of one series have different orientations")

    decoded: list[tuple[DicomHeader, np.ndarray, pydicom.Dataset]] = []
    bad: list[str] = []
    for h in headers:
        try:
            hu, ds = _decode(h.path)
        except PixelDecodeError as exc:
            bad.append(str(exc))
            continue
        decoded.append((h, hu, ds))
    if not decoded or len(bad) > max_bad_fraction * len(headers):
        reason = bad[0] if bad else "no slices"
        raise PixelDecodeError(f"{len(bad)} of {len(headers)} slices unreadable: {reason}")
    if bad:
        flags.append(f"{len(bad)} of {len(headers)} slices could not be decoded and were dropped")

    ds0 = decoded[0][2]
    row_cos, col_cos = _orientation(first)
    normal = np.cross(row_cos, col_cos)
    spacing_rc = _floats(ds0.get("PixelSpacing"), 2)
    if spacing_rc is None:
        spacing_rc = (1.0, 1.0)
        flags.append("PixelSpacing missing: 1 mm assumed")

    with_pos = [d for d in decoded if d[0].position is not None]
    if len(with_pos) < len(decoded):
        if with_pos and len(with_pos) >= 0.5 * len(decoded):
            flags.append(
                f"{len(decoded) - len(with_pos)} slices without ImagePositionPatient were dropped"
            )
            decoded = with_pos
        else:
            return _volume_without_positions(decoded, first, row_cos, col_cos, spacing_rc, flags)

    along = np.array([float(np.dot(d[0].position, normal)) for d in decoded])  # type: ignore[arg-type]
    order = np.argsort(along, kind="stable")
    decoded = [decoded[i] for i in order]
    along = along[order]

    if len(decoded) > 1:
        steps = np.diff(along)
        dup = steps < 1e-3
        if dup.any():
            flags.append(f"{int(dup.sum())} slices at duplicate positions were dropped")
            keep = np.concatenate([[True], ~dup])
            decoded = [d for d, k in zip(decoded, keep, strict=True) if k]
            along = along[keep]
            steps = np.diff(along)
    positions_xyz = np.array([d[0].position for d in decoded], dtype=float)

    if len(decoded) > 1:
        step = float(np.median(steps))
        gaps = steps > 1.5 * step
        if gaps.any():
            flags.append(
                f"{int(gaps.sum())} gap(s) between slices (largest {float(steps.max()):.1f} mm, "
                f"usual spacing {step:.1f} mm): slices kept, spacing is not uniform"
            )
        stack = (positions_xyz[-1] - positions_xyz[0]) / (len(decoded) - 1)
        stack_dir = stack / max(float(np.linalg.norm(stack)), 1e-12)
        tilt = math.degrees(math.acos(min(1.0, abs(float(np.dot(stack_dir, normal))))))
        if tilt > TILT_TOLERANCE_DEG:
            flags.append(
                f"gantry tilt of {tilt:.1f} degrees: slices are sheared; kept as acquired, "
                "not resampled"
            )
        k_col = stack_dir * step
    else:
        thickness = float(ds0.get("SliceThickness", 0) or 0) or 1.0
        k_col = normal * thickness

    array = np.stack([d[1] for d in decoded])
    affine = np.eye(4)
    affine[:3, 0] = k_col
    affine[:3, 1] = col_cos * spacing_rc[0]  # moving down a column = next row
    affine[:3, 2] = row_cos * spacing_rc[1]  # moving along a row = next column
    affine[:3, 3] = positions_xyz[0]
    canon, canon_affine = canonicalize(array, affine)
    # canonical z runs toward Superior: report slice positions in that order
    along_canon = along if affine[2, 0] >= 0 else along[::-1]
    return _make_volume(canon, canon_affine, first, flags, along_canon)


def _orientation(h: DicomHeader) -> tuple[np.ndarray, np.ndarray]:
    if h.orientation is None:
        return np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    return np.asarray(h.orientation[:3], dtype=float), np.asarray(h.orientation[3:], dtype=float)


def _volume_without_positions(
    decoded: list[tuple[DicomHeader, np.ndarray, pydicom.Dataset]],
    first: DicomHeader,
    row_cos: np.ndarray,
    col_cos: np.ndarray,
    spacing_rc: tuple[float, ...],
    flags: list[str],
) -> Volume:
    decoded = sorted(decoded, key=lambda d: (d[0].instance_number is None, d[0].instance_number))
    ds0 = decoded[0][2]
    thickness = float(ds0.get("SpacingBetweenSlices", 0) or ds0.get("SliceThickness", 0) or 0)
    flags.append(
        "ImagePositionPatient missing: slices ordered by InstanceNumber, spacing "
        + (
            f"{thickness:.1f} mm from the slice thickness"
            if thickness
            else "unknown (1 mm assumed)"
        )
    )
    affine = np.eye(4)
    affine[:3, 0] = np.cross(row_cos, col_cos) * (thickness or 1.0)
    affine[:3, 1] = col_cos * spacing_rc[0]
    affine[:3, 2] = row_cos * spacing_rc[1]
    array = np.stack([d[1] for d in decoded])
    canon, canon_affine = canonicalize(array, affine)
    return _make_volume(canon, canon_affine, first, flags, None)


def _make_volume(
    array: np.ndarray,
    affine: np.ndarray,
    first: DicomHeader,
    flags: list[str],
    along: np.ndarray | None,
) -> Volume:
    patient = first.patient_id
    if not patient:
        patient = f"study:{first.study_uid}"
        flags.append("PatientID missing: the study is treated as its own patient")
    return Volume(
        array=np.ascontiguousarray(array, dtype=np.float32),
        spacing=spacing_from_affine(affine),
        affine=affine,
        kind=IntensityKind.HU,
        patient_key=patient,
        study_key=first.study_uid,
        flags=flags,
        positions=None if along is None else np.asarray(along, dtype=float),
    )
