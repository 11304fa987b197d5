"""Slice-image datasets (class folders of PNG/JPG, as in COVID-CT and SARS-CoV-2 CT-scan).

These images are 8-bit display renderings, already windowed by whoever exported them: they are
marked ``GRAY8``, never treated as Hounsfield units, and carry no geometry.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.errors import NotAnImageError, UnsupportedScanError
from data_prep.volume import IntensityKind, Volume

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(
    path: Path, *, patient_key: str, label: int | None = None, data: bytes | None = None
) -> Volume:
    """Read one slice image as a one-slice GRAY8 volume.

    Args:
        path: PNG/JPG/... file; with ``data``, only its name.
        data: the file's bytes, for a file held in memory (never written to disk).
        patient_key: the patient this slice belongs to (folder or file name; PRIVATE).
        label: class label from the folder name, if any.

    Raises:
        NotAnImageError: the file cannot be decoded as an image.
        UnsupportedScanError: the image is empty or too small to be a CT slice.
    """
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                top = float(arr.max()) or 1.0
                arr = arr * (255.0 / top) if top > 255 else arr
                flags = ["16-bit image rescaled to 0..255 (not HU)"] if top > 255 else []
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float32)
                flags = [] if mode in ("L", "P", "1") else [f"{mode} image converted to grayscale"]
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as exc:
        raise NotAnImageError(f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 2 or min(arr.shape) < 16:
        raise UnsupportedScanError(f"image of shape {arr.shape} is too small to be a CT slice")
    nan = float("nan")
    return Volume(
        array=arr[None],
        spacing=(nan, nan, nan),
        affine=np.eye(4),
        kind=IntensityKind.GRAY8,
        patient_key=patient_key,
        label=label,
        flags=flags,
        positions=None,
    )
