"""DICOM: find CT series in a tree, choose the axial one of each study, read it as a HU volume.

Two steps so that a tree of thousands of files is grouped before any pixel is decoded:
``probe_file`` reads one header (pixels deferred), ``read_series`` decodes the chosen series.
Identifiers read here (PatientID, UIDs) stay in memory and are only ever hashed downstream.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
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


NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2": "<",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": "<",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2": ">",  # Explicit VR Big Endian (retired, still found in archives)
}


@dataclass(frozen=True)
class RawPixels:
    """Location and layout of uncompressed single-frame grayscale pixel data in a file."""

    offset: int
    length: int
    byte_order: str  # "<" or ">"
    bits_allocated: int
    bits_stored: int
    signed: bool
    slope: float
    intercept: float

    def read(self, path: str, rows: int, columns: int, data: bytes | None = None) -> np.ndarray:
        """Pixels in HU, exactly as pydicom's pixel_array plus rescale would give them.

        ``data``: the file's bytes when it lives in memory (an upload); else read from ``path``.
        """
        n = rows * columns
        kind = "i" if self.signed else "u"
        dtype = np.dtype(f"{self.byte_order}{kind}{self.bits_allocated // 8}")
        if self.length < n * dtype.itemsize:
            raise PixelDecodeError(
                f"pixel data holds {self.length} bytes, {rows}x{columns} pixels need "
                f"{n * dtype.itemsize}"
            )
        if data is not None:
            avail = max(0, (len(data) - self.offset) // dtype.itemsize)
            arr = np.frombuffer(data, dtype=dtype, count=min(n, avail), offset=self.offset)
        else:
            arr = np.fromfile(path, dtype=dtype, count=n, offset=self.offset)
        if arr.size < n:
            raise PixelDecodeError(f"file truncated: {arr.size} of {n} pixels present")
        if self.bits_stored < self.bits_allocated:
            # bits above BitsStored are not pixel data (PS3.5 8.1.1): mask, then sign-extend
            shift = self.bits_allocated - self.bits_stored
            if self.signed:
                arr = (arr << shift) >> shift
            else:
                arr = arr & ((1 << self.bits_stored) - 1)
        hu = arr.reshape(rows, columns).astype(np.float64) * self.slope + self.intercept
        return hu.astype(np.float32)


class _Fields:
    """Reads a few header values straight from the bytes of pydicom's raw elements.

    pydicom converts a value on first access (validation, DSfloat objects); for the ~25 values the
    probe needs that costs more than parsing the file, and the probe runs on every file of a
    tree.  An element pydicom has already converted is used as it is.
    """

    def __init__(self, ds: pydicom.Dataset) -> None:
        self.ds = ds

    def has(self, tag: int) -> bool:
        return tag in self.ds

    def texts(self, tag: int) -> list[str]:
        if tag not in self.ds:
            return []
        elem = self.ds.get_item(tag)
        value = elem.value
        if value is None:
            return []
        if isinstance(value, bytes):
            text = value.decode("latin-1").strip("\x00 ")
            return [part.strip("\x00 ") for part in text.split("\\")] if text else []
        if isinstance(value, list | tuple | MultiValue):
            return [str(v) for v in value]
        return [str(value)]

    def text(self, tag: int) -> str:
        return "\\".join(self.texts(tag))

    def floats(self, tag: int, n: int) -> tuple[float, ...] | None:
        try:
            out = tuple(float(v) for v in self.texts(tag))
        except ValueError:
            return None
        return out if len(out) == n and all(math.isfinite(v) for v in out) else None

    def number(self, tag: int) -> float | None:
        values = self.floats(tag, 1)
        return values[0] if values else None

    def scalar(self, tag: int) -> float | None:
        """The first value as written: None when absent, NaN when it is not a number (a
        header value that must not be mistaken for an absent one, e.g. RescaleSlope "inf")."""
        texts = self.texts(tag)
        if not texts or not texts[0]:
            return None
        try:
            return float(texts[0])
        except ValueError:
            return math.nan

    def us(self, tag: int, default: int) -> int:
        if tag not in self.ds:
            return default
        elem = self.ds.get_item(tag)
        value = elem.value
        if isinstance(value, bytes):
            if len(value) < 2:
                return default
            little = getattr(elem, "is_little_endian", True)
            return int.from_bytes(value[:2], "little" if little else "big")
        try:
            return int(value)
        except (TypeError, ValueError):
            return default


# Tags read by the probe (group, element); see DICOM PS3.6.
T_IMAGE_TYPE = 0x00080008
T_SOP_CLASS = 0x00080016
T_MODALITY = 0x00080060
T_SLICE_THICKNESS = 0x00180050
T_SPACING_BETWEEN = 0x00180088
T_GANTRY_TILT = 0x00181120
T_PATIENT_ID = 0x00100020
T_STUDY_UID = 0x0020000D
T_SERIES_UID = 0x0020000E
T_INSTANCE = 0x00200013
T_POSITION = 0x00200032
T_ORIENTATION = 0x00200037
T_SAMPLES = 0x00280002
T_FRAMES = 0x00280008
T_ROWS = 0x00280010
T_COLUMNS = 0x00280011
T_PIXEL_SPACING = 0x00280030
T_BITS_ALLOCATED = 0x00280100
T_BITS_STORED = 0x00280101
T_PIXEL_REPRESENTATION = 0x00280103
T_RESCALE_INTERCEPT = 0x00281052
T_RESCALE_SLOPE = 0x00281053
T_MODALITY_LUT = 0x00283000
T_DIRECTORY_RECORDS = 0x00041220
T_PIXEL_DATA = 0x7FE00010
T_FLOAT_PIXEL_DATA = 0x7FE00008


def _raw_pixels(ds: pydicom.Dataset, f: _Fields) -> RawPixels | None:
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    order = NATIVE_SYNTAXES.get(syntax)
    if order is None or not f.has(T_PIXEL_DATA):
        return None
    bits = f.us(T_BITS_ALLOCATED, 0)
    frames = f.number(T_FRAMES)
    if (
        bits not in (8, 16, 32)
        or f.us(T_SAMPLES, 1) != 1
        or (frames is not None and frames != 1)
        or f.has(T_MODALITY_LUT)
    ):
        return None
    elem = ds.get_item(T_PIXEL_DATA, keep_deferred=True)
    tell = getattr(elem, "value_tell", None)
    length = int(getattr(elem, "length", 0) or 0)
    if tell is None or elem.value is not None or not length or length == 0xFFFFFFFF:
        return None  # already read (small file) or encapsulated: let pydicom decode it
    slope = f.number(T_RESCALE_SLOPE)
    intercept = f.number(T_RESCALE_INTERCEPT)
    return RawPixels(
        offset=int(tell),
        length=length,
        byte_order=order,
        bits_allocated=bits,
        bits_stored=f.us(T_BITS_STORED, bits) or bits,
        signed=f.us(T_PIXEL_REPRESENTATION, 0) == 1,
        slope=1.0 if slope is None else slope,  # 0, NaN, inf: read_series drops the slice
        intercept=0.0 if intercept is None else intercept,
    )


def _positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None


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
    pixel_spacing: tuple[float, ...] | None = None
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    gantry_tilt: float | None = None  # GantryDetectorTilt, degrees
    rescale_slope: float | None = None  # as written (None: absent, i.e. 1)
    rescale_intercept: float | None = None
    bits_allocated: int = 0
    # Where the pixel bytes lie when they are stored raw (native transfer syntax), so that the
    # decode step reads them directly instead of parsing the whole header a second time.
    raw_pixels: RawPixels | None = None
    # The whole file, for DICOM read from memory (dashboard uploads never touch disk).
    data: bytes | None = field(default=None, repr=False, compare=False)

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


def probe_file(path: Path | str, data: bytes | None = None) -> DicomHeader:
    """Read one file's header, leaving the pixel data unread.

    Args:
        path: a file that may be DICOM (any name, with or without extension); with ``data``,
            only the name shown in messages.
        data: the file's bytes, for a file held in memory (never written to disk).

    Returns:
        The header fields used to group, order and choose series.

    Raises:
        NotAnImageError: not DICOM, a DICOMDIR index, or DICOM without an image.
    """

    def source() -> Any:
        return io.BytesIO(data) if data is not None else path

    try:
        ds = pydicom.dcmread(source(), defer_size="2 KB")
    except InvalidDicomError:
        # Files without the 128-byte preamble are still DICOM sometimes; force=True "reads"
        # anything, so the result is only accepted with the elements every image must have.
        try:
            ds = pydicom.dcmread(source(), defer_size="2 KB", force=True)
        except Exception as exc:
            raise NotAnImageError(f"not a DICOM file ({type(exc).__name__})") from exc
        if not all(k in ds for k in ("SOPClassUID", "Rows", "Columns", "PixelData")):
            raise NotAnImageError(
                "not a DICOM file (no DICM preamble and no image elements)"
            ) from None
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        raise NotAnImageError(f"unreadable DICOM header ({type(exc).__name__}: {detail})") from exc

    f = _Fields(ds)
    meta = getattr(ds, "file_meta", None)
    media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if media_class == MEDIA_STORAGE_DIRECTORY or f.has(T_DIRECTORY_RECORDS):
        raise NotAnImageError(
            "DICOMDIR index file, not an image; the files it lists are read directly"
        )
    modality = f.text(T_MODALITY).upper()
    if not f.has(T_PIXEL_DATA) and not f.has(T_FLOAT_PIXEL_DATA):
        raise NotAnImageError(f"DICOM object without pixel data (modality {modality or 'unknown'})")
    instance = f.number(T_INSTANCE)
    frames = f.number(T_FRAMES)
    return DicomHeader(
        path=str(path),
        patient_id=f.text(T_PATIENT_ID),
        study_uid=f.text(T_STUDY_UID),
        series_uid=f.text(T_SERIES_UID) or f"no-series:{path}",
        modality=modality,
        sop_class=f.text(T_SOP_CLASS) or media_class,
        image_type=tuple(v.strip().upper() for v in f.texts(T_IMAGE_TYPE)),
        orientation=f.floats(T_ORIENTATION, 6),
        position=f.floats(T_POSITION, 3),  # type: ignore[arg-type]
        instance_number=None if instance is None else int(instance),
        rows=f.us(T_ROWS, 0),
        columns=f.us(T_COLUMNS, 0),
        frames=1 if frames is None else int(frames),
        pixel_spacing=f.floats(T_PIXEL_SPACING, 2),
        slice_thickness=_positive(f.number(T_SLICE_THICKNESS)),
        spacing_between_slices=_positive(f.number(T_SPACING_BETWEEN)),
        gantry_tilt=f.number(T_GANTRY_TILT),
        rescale_slope=f.scalar(T_RESCALE_SLOPE),
        rescale_intercept=f.scalar(T_RESCALE_INTERCEPT),
        bits_allocated=f.us(T_BITS_ALLOCATED, 0),
        raw_pixels=_raw_pixels(ds, f),
        data=data,
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


@dataclass
class StudyChoice:
    """One study's series: the one chosen for its volume, and why each other was not."""

    study: str
    chosen: str  # series UID
    series: dict[str, list[DicomHeader]]  # the axial CT candidates, chosen one included

    @property
    def headers(self) -> list[DicomHeader]:
        return self.series[self.chosen]

    def not_chosen(self) -> list[tuple[list[DicomHeader], str]]:
        n = len(self.headers)
        return [
            (
                headers,
                f"another axial CT series of the same study was chosen (this one has "
                f"{len(headers)} slices, the chosen one {n})",
            )
            for uid, headers in sorted(self.series.items())
            if uid != self.chosen
        ]


def select_series(
    headers: Sequence[DicomHeader],
) -> tuple[list[StudyChoice], list[tuple[list[DicomHeader], str]]]:
    """The one series grouping and choice, for ``covidct prepare`` and dashboard uploads alike:
    files grouped by (study, series), series that are not axial CT rejected with a reason, and
    per study the candidate with the most slices chosen.

    Returns:
        (one choice per study with a candidate, in study order; the rejected series with why).
    """
    groups: dict[tuple[str, str], list[DicomHeader]] = {}
    for h in headers:
        groups.setdefault((h.study_uid or f"no-study:{h.series_uid}", h.series_uid), []).append(h)
    by_study: dict[str, dict[str, list[DicomHeader]]] = {}
    rejected: list[tuple[list[DicomHeader], str]] = []
    for (study, uid), group in sorted(groups.items()):
        why = series_rejection(group)
        if why is None:
            by_study.setdefault(study, {})[uid] = group
        else:
            rejected.append((group, why))
    choices = [
        StudyChoice(study, choose_series(cands), cands) for study, cands in sorted(by_study.items())
    ]
    return choices, rejected


def decode_slice(header: DicomHeader) -> np.ndarray:
    """One slice in HU (float32, rows x columns).

    Raw native pixel data is read straight from its offset; anything else (compressed transfer
    syntaxes, modality LUTs, odd layouts) goes through pydicom's decoders.

    Raises:
        PixelDecodeError: the pixels cannot be decoded (truncated, corrupt, unsupported).
    """
    if header.raw_pixels is not None:
        try:
            return header.raw_pixels.read(
                header.path, header.rows, header.columns, data=header.data
            )
        except OSError as exc:
            raise PixelDecodeError(f"cannot read pixel data ({exc})") from exc
    try:
        ds = pydicom.dcmread(io.BytesIO(header.data) if header.data is not None else header.path)
        pixels = ds.pixel_array
        hu = apply_rescale(pixels, ds)
    except Exception as exc:
        detail = " ".join(str(exc).split())  # decoders report one line per plugin: keep one line
        raise PixelDecodeError(
            f"pixel data cannot be decoded ({type(exc).__name__}: {detail[:300]})"
        ) from exc
    if hu.ndim != 2:
        raise PixelDecodeError(f"expected one 2D grayscale frame, got pixel array shape {hu.shape}")
    return hu.astype(np.float32, copy=False)


# Beyond this many pixels a header describes no CT slice (they are 512 x 512, at most a few
# thousand square): refused before anything is allocated for it.
MAX_SLICE_PIXELS = 4096 * 4096


def _scalar_ok(value: float | None, *, nonzero: bool) -> bool:
    return value is None or (math.isfinite(value) and (value != 0 or not nonzero))


def consistent_slices(
    headers: Sequence[DicomHeader],
) -> tuple[list[DicomHeader], list[str]]:
    """The slices that agree with their series, and a flag for each kind left out.

    A slice is dropped when its RescaleSlope is 0, NaN or infinite or its RescaleIntercept is
    not finite (its HU would be wrong, e.g. a blank slice), or when its size, bit depth,
    orientation or pixel spacing differs from most of the series' slices (a slice from another
    reconstruction or a corrupt header). Never silently: each drop is flagged.

    Raises:
        GeometryError: no size/orientation/spacing/depth is shared by most slices, or nothing
            is left.
    """
    flags: list[str] = []
    kept = list(headers)
    bad_scale = [
        h
        for h in kept
        if not _scalar_ok(h.rescale_slope, nonzero=True)
        or not _scalar_ok(h.rescale_intercept, nonzero=False)
    ]
    if bad_scale:
        slopes = sorted({str(h.rescale_slope) for h in bad_scale})
        flags.append(
            f"{len(bad_scale)} slice(s) with an unusable RescaleSlope/Intercept "
            f"({', '.join(slopes)}) were dropped"
        )
        gone = {id(h) for h in bad_scale}
        kept = [h for h in kept if id(h) not in gone]
    too_big = [h for h in kept if h.rows * h.columns > MAX_SLICE_PIXELS]
    if too_big:
        flags.append(
            f"{len(too_big)} slice(s) whose header claims {too_big[0].rows}x"
            f"{too_big[0].columns} pixels (no CT slice is that large) were dropped"
        )
        gone = {id(h) for h in too_big}
        kept = [h for h in kept if id(h) not in gone]
    checks: list[tuple[str, Callable[[DicomHeader], object]]] = [
        ("size", lambda h: (h.rows, h.columns)),
        ("bit depth", lambda h: h.bits_allocated),
        ("orientation", lambda h: _rounded(h.orientation)),
        ("pixel spacing", lambda h: _rounded(h.pixel_spacing)),
    ]
    for what, key in checks:
        if not kept:
            break
        counts = Counter(key(h) for h in kept)
        usual, n = counts.most_common(1)[0]
        if len(counts) > 1:
            if 2 * n <= len(kept):
                raise GeometryError(
                    f"slices of one series have different {what}s and no {what} is shared by "
                    f"most of them ({len(counts)} different)"
                )
            odd = [h for h in kept if key(h) != usual]
            flags.append(
                f"{len(odd)} slice(s) whose {what} contradicts the rest of the series were dropped"
            )
            kept = [h for h in kept if key(h) == usual]
    if not kept:
        raise GeometryError("no slice of the series has a usable header")
    return kept, flags


def _rounded(values: tuple[float, ...] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(round(v, 3) for v in values)


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
    headers, flags = consistent_slices(headers)
    first = headers[0]
    decoded = _decode_all(headers, max_bad_fraction, flags)

    row_cos, col_cos = _orientation(first)
    normal = np.cross(row_cos, col_cos)
    spacing_rc = first.pixel_spacing
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

    decoded, along = _order_along(decoded, normal, flags)
    positions_xyz = np.array([d[0].position for d in decoded], dtype=float)
    k_col = _slice_step(first, positions_xyz, along, normal, flags)
    if (
        not any("gantry tilt" in f for f in flags)
        and first.gantry_tilt is not None
        and abs(first.gantry_tilt) > TILT_TOLERANCE_DEG
    ):
        # a single slice (or positions rewritten by a reformat) cannot show the shear
        flags.append(
            f"gantry tilt of {abs(first.gantry_tilt):.1f} degrees in the header "
            "(GantryDetectorTilt); slices kept as acquired, not resampled"
        )
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


def _decode_all(
    headers: Sequence[DicomHeader], max_bad_fraction: float, flags: list[str]
) -> list[tuple[DicomHeader, np.ndarray]]:
    """Every slice's pixels; a few undecodable slices are dropped and flagged, more refuse the
    series (``PixelDecodeError``)."""
    decoded: list[tuple[DicomHeader, np.ndarray]] = []
    bad: list[str] = []
    for h in headers:
        try:
            decoded.append((h, decode_slice(h)))
        except PixelDecodeError as exc:
            bad.append(str(exc))
    # one bad slice is tolerated even in a short series: it becomes a flagged gap
    if not decoded or len(bad) > max(1, int(max_bad_fraction * len(headers))):
        reason = bad[0] if bad else "no slices"
        raise PixelDecodeError(f"{len(bad)} of {len(headers)} slices unreadable: {reason}")
    if bad:
        flags.append(f"{len(bad)} of {len(headers)} slices could not be decoded and were dropped")
    return decoded


def _order_along(
    decoded: list[tuple[DicomHeader, np.ndarray]], normal: np.ndarray, flags: list[str]
) -> tuple[list[tuple[DicomHeader, np.ndarray]], np.ndarray]:
    """Slices sorted by position along the normal, duplicates dropped (flagged); and those
    positions."""
    along = np.array([float(np.dot(d[0].position, normal)) for d in decoded])  # type: ignore[arg-type]
    order = np.argsort(along, kind="stable")
    decoded = [decoded[i] for i in order]
    along = along[order]
    if len(decoded) > 1:
        dup = np.diff(along) < 1e-3
        if dup.any():
            flags.append(f"{int(dup.sum())} slices at duplicate positions were dropped")
            keep = np.concatenate([[True], ~dup])
            decoded = [d for d, k in zip(decoded, keep, strict=True) if k]
            along = along[keep]
    return decoded, along


def _slice_step(
    first: DicomHeader,
    positions_xyz: np.ndarray,
    along: np.ndarray,
    normal: np.ndarray,
    flags: list[str],
) -> np.ndarray:
    """The vector from one slice to the next (mm); gaps and a gantry tilt are flagged."""
    if len(positions_xyz) < 2:
        thickness = first.spacing_between_slices or first.slice_thickness or 1.0
        return normal * thickness  # type: ignore[no-any-return]
    steps = np.diff(along)
    step = float(np.median(steps))
    gaps = steps > 1.5 * step
    if gaps.any():
        flags.append(
            f"{int(gaps.sum())} gap(s) between slices (largest {float(steps.max()):.1f} mm, "
            f"usual spacing {step:.1f} mm): slices kept, spacing is not uniform"
        )
    stack = (positions_xyz[-1] - positions_xyz[0]) / (len(positions_xyz) - 1)
    stack_dir = stack / max(float(np.linalg.norm(stack)), 1e-12)
    tilt = math.degrees(math.acos(min(1.0, abs(float(np.dot(stack_dir, normal))))))
    if tilt > TILT_TOLERANCE_DEG:
        flags.append(
            f"gantry tilt of {tilt:.1f} degrees: slices are sheared; kept as acquired, "
            "not resampled"
        )
    return stack_dir * step  # type: ignore[no-any-return]


def _orientation(h: DicomHeader) -> tuple[np.ndarray, np.ndarray]:
    if h.orientation is None:
        return np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    return np.asarray(h.orientation[:3], dtype=float), np.asarray(h.orientation[3:], dtype=float)


def _volume_without_positions(
    decoded: list[tuple[DicomHeader, np.ndarray]],
    first: DicomHeader,
    row_cos: np.ndarray,
    col_cos: np.ndarray,
    spacing_rc: tuple[float, ...],
    flags: list[str],
) -> Volume:
    decoded = sorted(decoded, key=lambda d: (d[0].instance_number is None, d[0].instance_number))
    thickness = first.spacing_between_slices or first.slice_thickness or 0.0
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
