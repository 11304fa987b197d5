"""NIfTI volumes (.nii, .nii.gz): first volume of 4D files, reoriented to canonical LPS order."""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from data_prep.errors import NotAnImageError, UnsupportedScanError
from data_prep.volume import IntensityKind, Volume, canonicalize, spacing_from_affine

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
# nibabel's world space is RAS; DICOM's (and ours) is LPS: negate x and y.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_nifti_name(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def nifti_stem(path: Path) -> str:
    """The file name without .nii / .nii.gz: the patient key when nothing better exists."""
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _gunzip(data: bytes, max_bytes: int | None) -> bytes:
    """Decompress, refusing output beyond ``max_bytes`` (a gzip bomb) without allocating it."""
    if max_bytes is None:
        return gzip.decompress(data)
    d = zlib.decompressobj(wbits=31)  # gzip container
    out = d.decompress(data, max_bytes + 1)
    if len(out) > max_bytes:
        raise NotAnImageError(
            f"decompresses to more than {max_bytes // 2**20} MiB: too large for one CT volume"
        )
    if not d.eof:
        raise NotAnImageError("corrupt or truncated gzip data (stream does not end)")
    return out


def _load(
    path: Path, flags: list[str], data: bytes | None = None, max_bytes: int | None = None
) -> nib.Nifti1Image:
    if data is None:
        data = path.read_bytes()
    gzipped_name = path.name.lower().endswith(".gz")
    is_gzip = data[:2] == GZIP_MAGIC
    if is_gzip != gzipped_name:
        flags.append(
            "file content is gzip-compressed but the name ends in .nii: read as .nii.gz "
            "(rename it to .nii.gz)"
            if is_gzip
            else "file is named .nii.gz but is not compressed: read as .nii (rename it to .nii)"
        )
    if is_gzip:
        try:
            data = _gunzip(data, max_bytes)
        except (OSError, EOFError, zlib.error) as exc:
            raise NotAnImageError(f"corrupt or truncated gzip data ({exc})") from exc
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            img = cls.from_bytes(data)
        except (ImageFileError, ValueError, EOFError, OSError, nib.spatialimages.HeaderDataError):
            continue
        _check_size(img, len(data))
        return img
    raise NotAnImageError("not a NIfTI-1 or NIfTI-2 file (header not recognised)")


def _check_size(img: nib.Nifti1Image, nbytes: int) -> None:
    """Refuse a header that promises more voxels than the file holds, before reading them (a
    corrupt dim field would otherwise allocate gigabytes)."""
    header = img.header
    shape = tuple(int(d) for d in img.shape[:3])
    try:
        itemsize = header.get_data_dtype().itemsize
        offset = int(header.get_data_offset())
    except (TypeError, ValueError) as exc:
        raise NotAnImageError(f"corrupt NIfTI header ({exc})") from exc
    need = offset + int(np.prod(shape, dtype=np.int64)) * itemsize
    if any(d < 1 for d in shape) or need > nbytes:
        raise NotAnImageError(
            f"the header promises a {'x'.join(map(str, shape))} volume ({need} bytes from "
            f"offset {offset}) but the file holds {nbytes} bytes: truncated file or corrupt "
            "header (dim, datatype or vox_offset)"
        )


def read_nifti(
    path: Path,
    *,
    label: int | None = None,
    data: bytes | None = None,
    max_bytes: int | None = None,
) -> Volume:
    """Read a NIfTI file as a canonical volume.

    Args:
        path: .nii or .nii.gz file (3D, or 4D: the first volume is used); with ``data``, only
            the name (its extension and messages).
        label: class label taken from the file's folder, if any.
        data: the file's bytes, for a file held in memory (never written to disk).
        max_bytes: refuse a file that decompresses to more than this.

    Raises:
        NotAnImageError: not NIfTI, corrupt, or truncated.
        UnsupportedScanError: not a 3D/4D image.
    """
    flags: list[str] = []
    img = _load(path, flags, data, max_bytes)
    shape = img.shape
    if len(shape) < 2 or len(shape) > 4:
        raise UnsupportedScanError(f"expected a 3D or 4D image, got shape {tuple(shape)}")
    try:
        if len(shape) == 4:
            flags.append(f"4D file with {shape[3]} volumes: the first volume is used")
            array = np.asarray(img.dataobj[..., 0], dtype=np.float32)
        else:
            array = np.asarray(img.get_fdata(dtype=np.float32))
            if array.ndim == 2:
                array = array[:, :, None]
    except (EOFError, OSError, ValueError, zlib.error) as exc:
        detail = " ".join(str(exc).split())[:200]  # nibabel's messages span lines
        raise NotAnImageError(f"voxel data truncated or corrupt ({detail})") from exc
    # dataobj slices ignore nothing: scaling (scl_slope/inter) is applied by ArrayProxy
    header = img.header
    qform_code = int(header["qform_code"])
    sform_code = int(header["sform_code"])
    if qform_code == 0 and sform_code == 0:
        flags.append(
            "orientation undefined (qform and sform codes are 0): voxel axes assumed to be "
            "x=Right-to-Left, y=Anterior-to-Posterior, z=Inferior-to-Superior; check left/right"
        )
    affine = RAS_TO_LPS @ img.affine
    canon, canon_affine = canonicalize(array, affine)
    if not np.isfinite(canon).all():
        raise UnsupportedScanError("voxel data contains NaN or infinite values")
    lo, hi = float(canon.min()), float(canon.max())
    if lo > -500 or hi < 0:
        flags.append(
            f"values range {lo:.0f}..{hi:.0f} does not look like CT Hounsfield units "
            "(air should be near -1000): check the file is a CT scan in HU"
        )
    n = canon.shape[0]
    positions = canon_affine[2, 3] + np.arange(n) * canon_affine[2, 0]
    return Volume(
        array=np.ascontiguousarray(canon, dtype=np.float32),
        spacing=spacing_from_affine(canon_affine),
        affine=canon_affine,
        kind=IntensityKind.HU,
        patient_key=nifti_stem(path),
        label=label,
        flags=flags,
        positions=positions,
    )
