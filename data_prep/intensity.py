"""Intensity transforms: HU windowing and 8-bit storage. Array in, array out."""

from __future__ import annotations

import numpy as np

# Lung window (level -600 HU, width 1500 HU): the usual reading window for ground-glass opacity.
LUNG_LEVEL = -600.0
LUNG_WIDTH = 1500.0


def window(hu: np.ndarray, *, level: float, width: float) -> np.ndarray:
    """Map HU to [0, 1] through a display window (values outside are clipped).

    Args:
        hu: Hounsfield units, any shape.
        level: window centre in HU.
        width: window width in HU (> 0).
    """
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    lo = level - width / 2.0
    out = (hu.astype(np.float32, copy=False) - np.float32(lo)) / np.float32(width)
    return np.clip(out, 0.0, 1.0)


def gray8_to_unit(values: np.ndarray) -> np.ndarray:
    """8-bit display values (0..255) to [0, 1]; they are already windowed by their exporter."""
    return np.clip(values.astype(np.float32, copy=False) / 255.0, 0.0, 1.0)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 with rounding (storage: 1500 HU / 255 ~ 6 HU per level)."""
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
