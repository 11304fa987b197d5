"""Slice selection and resizing: array in, array out."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

# Air inside the body (lung parenchyma is about -850 HU; ground glass up to about -300 HU).
LUNG_THRESHOLD_HU = -400.0


def lung_area_fraction(hu_slice: np.ndarray) -> float:
    """Fraction of the slice covered by low-density regions enclosed by the body.

    Outside air touches the image border; lungs (and bowel gas) do not.  The fraction is a cheap,
    robust test of whether a slice cuts through the lungs.
    """
    low = hu_slice < LUNG_THRESHOLD_HU
    labels, n = ndimage.label(low)
    if n == 0:
        return 0.0
    touches_border = np.zeros(n + 1, dtype=bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        touches_border[edge] = True
    touches_border[0] = True  # label 0 is "not low density"
    return float((~touches_border[labels]).mean())


def lung_slice_range(hu: np.ndarray, *, min_lung_fraction: float) -> tuple[int, int] | None:
    """The contiguous range [start, stop) of slices from the first to the last lung slice.

    Args:
        hu: canonical volume (z, y, x) in HU.
        min_lung_fraction: a slice counts as a lung slice when at least this fraction of its
            area is enclosed low-density tissue.

    Returns:
        (start, stop), or None when no slice contains lung.
    """
    fractions = np.array([lung_area_fraction(s) for s in hu])
    hits = np.flatnonzero(fractions >= min_lung_fraction)
    if hits.size == 0:
        return None
    return int(hits[0]), int(hits[-1]) + 1


def resize_slices(slices: np.ndarray, *, size: int) -> np.ndarray:
    """Resize each slice of (n, h, w) float32 to (n, size, size), antialiased when shrinking."""
    n, h, w = slices.shape
    if (h, w) == (size, size):
        return slices.astype(np.float32, copy=False)
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        # PIL's bilinear filter widens its support when downscaling, so thin structures average
        # instead of aliasing (scipy.ndimage.zoom would sample).
        img = Image.fromarray(np.ascontiguousarray(slices[i], dtype=np.float32), mode="F")
        out[i] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    return out
