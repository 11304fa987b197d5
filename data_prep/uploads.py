"""Scans uploaded to the dashboard, read entirely in memory with the readers ``prepare`` uses.

An upload is one or more files: DICOM files (any names), a .zip of a DICOM series or study, a
NIfTI volume (.nii / .nii.gz), or PNG/JPG slice images. Nothing is written to disk and nothing is
logged: the bytes live in this process only. Zip archives are expanded in memory within limits
(member count, total size, compression ratio, no nested archives; member names are never used as
paths), and every file that cannot be used is reported with its reason while the rest is kept.

The slices handed to a model come from ``data_prep.worker.hu_volume_slices`` / ``image_slice``:
the same preprocessing as training.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from data_prep.errors import InputError
from data_prep.intensity import to_uint8, window
from data_prep.readers import DicomSeries, NiftiFile, read_scan
from data_prep.readers.dicom import DicomHeader, probe_file, select_series
from data_prep.readers.images import IMAGE_SUFFIXES, read_image
from data_prep.settings import SliceSettings
from data_prep.volume import Volume
from data_prep.worker import hu_volume_slices, image_slice

__all__ = ["UploadError", "UploadLimits", "UploadedScan", "read_upload"]

MiB = 2**20


class UploadError(InputError):
    """Nothing in the upload is a usable CT scan (the message says what each file was)."""


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on what one upload may expand to in memory."""

    max_total_bytes: int = 1024 * MiB  # everything, after unzipping
    max_files: int = 4000
    max_member_ratio: float = 200.0  # uncompressed / compressed size of one zip member
    max_volume_bytes: int = 1024 * MiB  # one decompressed NIfTI


@dataclass
class UploadedScan:
    """One scan, ready for a model and for a viewer. Holds no header value.

    Attributes:
        kind: "hu" (DICOM or NIfTI in Hounsfield units) or "gray8" (8-bit slice images).
        slices: (n, size, size) uint8, exactly the model's input (as ``covidct prepare``).
        display: (n, H, W) uint8 at the scan's own resolution, lung window, for the viewer.
        description: what was read, in words, without identifiers.
        flags: caveats from the readers (geometry, intensities).
        skipped: "name: reason" for every uploaded file that was left out.
    """

    kind: str
    slices: np.ndarray
    display: np.ndarray
    description: str
    flags: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _is_nifti(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(".nii") or lower.endswith(".nii.gz")


def _is_image(name: str) -> bool:
    return PurePosixPath(name.lower()).suffix in IMAGE_SUFFIXES


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name.lower())]


def _expand(
    files: Sequence[tuple[str, bytes]], limits: UploadLimits, skipped: list[str]
) -> list[tuple[str, bytes]]:
    """Top-level files, with .zip archives replaced by their members (one level only)."""
    out: list[tuple[str, bytes]] = []
    total = 0

    def add(name: str, data: bytes) -> None:
        nonlocal total
        if len(out) >= limits.max_files:
            raise UploadError(
                f"more than {limits.max_files} files in the upload: upload one series or study"
            )
        total += len(data)
        if total > limits.max_total_bytes:
            raise UploadError(
                f"the upload expands to more than {limits.max_total_bytes // MiB} MiB: "
                "upload one series or study at a time"
            )
        out.append((name, data))

    for name, data in files:
        if not (name.lower().endswith(".zip") or data[:4] == b"PK\x03\x04"):
            add(name, data)
            continue
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            skipped.append(f"{name}: not a readable zip archive ({exc})")
            continue
        for info in members:
            if info.is_dir():
                continue
            label = f"{name}/{info.filename}"
            if info.flag_bits & 0x1:
                skipped.append(f"{label}: encrypted zip member (upload it unencrypted)")
                continue
            if info.filename.lower().endswith(".zip"):
                skipped.append(f"{label}: nested zip archives are not expanded")
                continue
            if info.compress_size and info.file_size / info.compress_size > limits.max_member_ratio:
                raise UploadError(
                    f"{label}: compressed {info.file_size / info.compress_size:.0f} to 1, "
                    "which no CT file is (a zip bomb?); the upload was refused"
                )
            if total + info.file_size > limits.max_total_bytes:
                raise UploadError(
                    f"{name} expands to more than {limits.max_total_bytes // MiB} MiB: "
                    "upload one series or study at a time"
                )
            try:
                with archive.open(info) as fh:
                    # read at most what the header claims (+1): a lying header cannot inflate it
                    content = fh.read(info.file_size + 1)
            except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as exc:
                skipped.append(f"{label}: cannot be extracted ({exc})")
                continue
            if len(content) > info.file_size:
                raise UploadError(f"{label}: larger than its zip header says; upload refused")
            add(label, content)
    return out


def _display(vol_array: np.ndarray, settings: SliceSettings) -> np.ndarray:
    return to_uint8(window(vol_array, level=settings.window_level, width=settings.window_width))


def read_upload(
    files: Sequence[tuple[str, bytes]],
    settings: SliceSettings,
    limits: UploadLimits | None = None,
) -> UploadedScan:
    """Read one uploaded scan in memory and preprocess it exactly as ``covidct prepare`` does.

    Args:
        files: (file name, bytes) as uploaded.
        settings: the slice settings of the model's training data (size, window, lung range).
        limits: bounds on sizes and counts.

    Returns:
        The scan; files that could not be used are listed in ``skipped``.

    Raises:
        UploadError: nothing usable, several different scans, or a limit exceeded.
        InputError: the one scan found is unusable (e.g. no slice contains lung).
    """
    limits = limits or UploadLimits()
    if not files:
        raise UploadError("no file uploaded")
    skipped: list[str] = []
    expanded = _expand(files, limits, skipped)
    niftis = [(n, d) for n, d in expanded if _is_nifti(n)]
    images = [(n, d) for n, d in expanded if _is_image(n)]
    headers: list[DicomHeader] = []
    for name, data in expanded:
        if _is_nifti(name) or _is_image(name):
            continue
        try:
            headers.append(probe_file(name, data=data))
        except InputError as exc:
            skipped.append(f"{name}: {exc}")
    kinds = [
        k for k, present in (("DICOM", headers), ("NIfTI", niftis), ("image", images)) if present
    ]
    if len(kinds) > 1:
        raise UploadError(
            f"the upload mixes {' and '.join(kinds)} files: upload one scan at a time"
        )
    if niftis:
        return _nifti_scan(niftis, settings, limits, skipped)
    if images:
        return _image_scan(images, settings, skipped)
    if headers:
        return _dicom_scan(headers, settings, skipped)
    reasons = "; ".join(skipped[:5]) + (
        f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    )
    raise UploadError(f"no CT scan found in the upload ({reasons})")


def _hu_scan(vol: Volume, what: str, settings: SliceSettings, skipped: list[str]) -> UploadedScan:
    made = hu_volume_slices(vol, settings)
    start, stop = made.start, made.stop
    rows, cols = vol.array.shape[1:]
    return UploadedScan(
        kind="hu",
        slices=made.slices,
        display=_display(made.crop(vol.array[start:stop]), settings),
        description=(
            f"{what}: {vol.n_slices} slices of {rows}x{cols}; slices {start + 1}-{stop} "
            f"contain lung and are analysed"
        ),
        flags=list(vol.flags),
        skipped=skipped,
    )


def _nifti_scan(
    niftis: list[tuple[str, bytes]],
    settings: SliceSettings,
    limits: UploadLimits,
    skipped: list[str],
) -> UploadedScan:
    if len(niftis) > 1:
        raise UploadError(f"{len(niftis)} NIfTI files uploaded: upload one volume at a time")
    name, data = niftis[0]
    # the name only tells the reader the extension: with ``data`` nothing touches the disk
    vol = read_scan(NiftiFile(Path(name), data=data, max_bytes=limits.max_volume_bytes))
    return _hu_scan(vol, "NIfTI volume", settings, skipped)


def _image_scan(
    images: list[tuple[str, bytes]], settings: SliceSettings, skipped: list[str]
) -> UploadedScan:
    model_slices: list[np.ndarray] = []
    display: list[np.ndarray] = []
    flags: list[str] = []
    for name, data in sorted(images, key=lambda nd: _natural_key(nd[0])):
        try:
            vol = read_image(Path(name), patient_key="upload", data=data)
        except InputError as exc:
            skipped.append(f"{name}: {exc}")
            continue
        model_slices.append(image_slice(vol, settings))
        display.append(to_uint8(vol.array[0] / 255.0))
        flags.extend(f for f in vol.flags if f not in flags)
    if not model_slices:
        raise UploadError(f"none of the {len(images)} images could be read ({skipped[0]})")
    shapes = {d.shape for d in display}
    # The viewer needs one size, and Grad-CAM maps onto what the model saw: show the model's
    # slices when sizes differ or when each image was cropped to its own lung box.
    if len(shapes) > 1 or settings.crop != "none":
        display = [s.copy() for s in model_slices]
    flags.insert(0, "8-bit slice images: intensities are display values, not HU")
    return UploadedScan(
        kind="gray8",
        slices=np.stack(model_slices),
        display=np.stack(display),
        description=f"{len(model_slices)} slice image(s), in file-name order",
        flags=flags,
        skipped=skipped,
    )


def _dicom_scan(
    headers: list[DicomHeader], settings: SliceSettings, skipped: list[str]
) -> UploadedScan:
    choices, rejected_series = select_series(headers)
    rejected = [f"a series of {len(group)} file(s): {why}" for group, why in rejected_series]
    if not choices:
        raise UploadError("no axial CT series in the upload (" + "; ".join(rejected[:3]) + ")")
    # one scan per upload: the largest chosen series of any study in it
    best = max(choices, key=lambda c: (len(c.headers), c.chosen))
    n_series = len(rejected_series) + sum(len(c.series) for c in choices)
    vol = read_scan(DicomSeries(best.headers))
    what = "DICOM CT series"
    if n_series > 1:
        what += f" (the largest axial CT series of {n_series} in the upload)"
    scan = _hu_scan(vol, what, settings, skipped)
    scan.flags.extend(f"left out {r}" for r in rejected)
    return scan
