"""The one in-memory scan type every reader returns, and its orientation convention.

Canonical orientation (``Volume.array``): axes ``(z, y, x)`` where increasing index means
increasing DICOM patient (LPS) coordinate: z toward Superior, y toward Posterior, x toward the
patient's Left.  ``array[k]`` is therefore an axial slice in the usual radiological display
(anterior at the top, patient's right on the image's left), and slices run feet to head.
``affine`` maps ``(z, y, x, 1)`` voxel indices to LPS millimetres.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class IntensityKind(enum.Enum):
    """What the voxel values mean."""

    HU = "hu"  # calibrated Hounsfield units (DICOM rescale tags, CT NIfTI)
    GRAY8 = "gray8"  # 8-bit display values from PNG/JPG slices: already windowed, not HU


@dataclass
class Volume:
    """One scan in canonical orientation.

    Attributes:
        array: float32 voxels, shape (z, y, x), canonical orientation (see module doc).
        spacing: voxel size in mm along (z, y, x); NaN where unknown (8-bit slice images).
        affine: 4x4 map from (z, y, x, 1) indices to LPS mm; identity-scaled when unknown.
        kind: whether ``array`` is HU or 8-bit display values.
        patient_key: the source's own patient identifier (PRIVATE: only ever hashed).
        study_key: the source's study identifier (PRIVATE: only ever hashed), or "".
        label: 0/1 when the source itself carries one (class folder), else None.
        flags: human-readable notes about the input that do not prevent its use
            (gaps, tilt, undefined orientation). They must never contain identifiers.
        positions: slice position along the slice normal in mm, shape (z,), NaN when unknown.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    kind: IntensityKind
    patient_key: str
    study_key: str = ""
    label: int | None = None
    flags: list[str] = field(default_factory=list)
    positions: np.ndarray | None = None

    @property
    def n_slices(self) -> int:
        return int(self.array.shape[0])


def canonicalize(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip a 3D array so its axes follow the canonical (z, y, x) LPS convention.

    Args:
        array: 3D voxel array with arbitrary axis order.
        affine: 4x4 map from the array's indices to LPS mm.

    Returns:
        The reoriented array (a view where possible) and its affine.  Each array axis is assigned
        to the world axis its direction is closest to; oblique scans keep their exact affine, only
        the voxel order changes.
    """
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {array.shape}")
    directions = affine[:3, :3]
    # world axis (0=X/L, 1=Y/P, 2=Z/S) each array axis points along, greedily by largest component
    world_of_axis = [-1, -1, -1]
    taken: set[int] = set()
    order = np.argsort(-np.abs(directions).max(axis=0))
    for ax in order:
        comps = np.abs(directions[:, ax]) / max(float(np.linalg.norm(directions[:, ax])), 1e-12)
        for w in np.argsort(-comps):
            if int(w) not in taken:
                world_of_axis[int(ax)] = int(w)
                taken.add(int(w))
                break
    # canonical axis c (0=z, 1=y, 2=x) holds world axis 2 - c
    perm = [world_of_axis.index(2), world_of_axis.index(1), world_of_axis.index(0)]
    out = np.transpose(array, perm)
    new_affine = affine.copy()
    new_affine[:, :3] = affine[:, perm]
    for c in range(3):
        world = 2 - c
        if new_affine[world, c] < 0:
            n = out.shape[c]
            out = np.flip(out, axis=c)
            # index i now holds old index n-1-i: origin moves to the old last voxel
            new_affine[:3, 3] = new_affine[:3, 3] + new_affine[:3, c] * (n - 1)
            new_affine[:3, c] = -new_affine[:3, c]
    return out, new_affine


def affine_from_spacing(
    spacing: tuple[float, float, float], origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    """Affine of an axis-aligned canonical volume.

    Args:
        spacing: voxel size (z, y, x) in mm.
        origin: LPS position (x, y, z) of voxel (0, 0, 0) in mm.
    """
    aff = np.zeros((4, 4))
    aff[3, 3] = 1.0
    aff[2, 0] = spacing[0]
    aff[1, 1] = spacing[1]
    aff[0, 2] = spacing[2]
    aff[:3, 3] = origin
    return aff


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along the three array axes (column norms of the affine)."""
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))
