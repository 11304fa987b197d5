"""Synthetic chest-CT anatomy: one deterministic phantom volume in HU per random generator.

The phantom is built in physical millimetres on a grid finer than the output (2x or more in
plane, several sub-slices per slice), then averaged down so that every edge has partial-volume
values, blurred by a scanner point-spread function and given correlated noise.  That matters for
the project: COVID ground glass (-700..-300 HU) must not be separable from healthy lungs by
counting pixels in a HU band, so both classes carry findings that produce the same densities
(dependent atelectasis, nodules, partial-volume vessels and lung edges, effusions, variable
inspiration).  A classifier has to learn the shape and place of the patches.

Coordinates: world is DICOM patient space (LPS, mm); the volume is in the canonical orientation of
:mod:`data_prep.volume` (axes z, y, x; z toward Superior, y toward Posterior, x toward Left).
Internally, anatomy is described in patient coordinates ``u`` (toward Left), ``v`` (toward
Posterior), both centred on the body and rotated by a small per-patient angle, and ``h``, the
height along the lungs (0 at the lowest lung recess, 1 at the apex).

Two styles (:class:`PhantomStyle`) draw from different distributions, like two hospitals with
their own scanners and patients: a model that only works on one has learned the generator.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

BURDENS = ("none", "mild", "severe")
HU_MIN, HU_MAX = -1024, 3071
# Lesion fraction of an output voxel above which it counts as lesion in the truth.
LESION_TRUTH_FRACTION = 0.4
# Hi-res voxels rendered at once: bounds memory for large matrices (float32 temporaries).
_CHUNK_VOXELS = 2_000_000
# Grid steps (mm) of the smooth random fields: vessels are finer than texture and edge shapes.
_VESSEL_STEP_MM, _TEXTURE_STEP_MM = 4.0, 7.0

HU_AIR, HU_FAT, HU_MUSCLE, HU_SOFT, HU_BLOOD = -1000.0, -95.0, 50.0, 40.0, 40.0


class PhantomStyle(enum.Enum):
    """Which generator draws the phantoms: two "sites" with their own scanner and population.

    A classifier that only works on one of them has learned the generator, not the disease.
    """

    A = "a"  # the original generator (its output never changes for a given seed)
    B = "b"  # another site: see STYLE_B


Range = tuple[float, float]


@dataclass(frozen=True)
class StyleParams:
    """The distributions one style draws from (uniform ranges ``(low, high)``).

    A range with ``low == high`` is a constant and draws nothing from the generator: style A's
    stream of random numbers, hence its output, stays exactly what it was before styles existed.
    """

    # population and field of view
    body_a: Range  # left-right body semi-axis, mm
    fat_fraction: Range  # subcutaneous fat / antero-posterior semi-axis
    fov: Range  # reconstruction field of view, mm ...
    body_fill: float  # ... widened so that the body is at most this fraction of it
    # scan range, slices and breathing
    lung_height: Range  # lung height / (190 mm + 0.55 body_a)
    extent: Range  # scanned z range / lung height
    thickness: Range  # slice thickness / slice spacing (below 1: gaps between slices)
    inspiration: Range  # 1 = deep breath: darker lungs, lower diaphragm
    # scanner
    noise_sd: Range  # HU
    noise_smooth: float  # pixels: Gaussian correlation of the noise ...
    noise_highpass: float  # ... minus its own blur at this sigma (0 = off): grainy texture
    psf_sigma: Range  # pixels
    sharpen: Range  # unsharp-mask gain of the reconstruction kernel (0 = smooth kernel)
    sharpen_sigma: float  # pixels
    # COVID-19 findings
    peripheral_mm: float  # patch centres lie this close to the chest wall
    count_mild: tuple[int, int]  # patches per lung, [low, high)
    count_severe: tuple[int, int]
    diameter_mild: Range  # mm
    diameter_severe: Range
    lobes: tuple[int, int]  # ellipsoids per patch, inclusive (more than one: lobulated)
    ggo_hu_mild: Range
    ggo_hu_severe: Range
    core_prob: Range  # (mild, severe): probability of a consolidated core
    core_hu: Range
    core_radius: Range  # radius units; (0, 0): the core is where the patch is densest
    paving_prob: Range  # (mild, severe): probability of crazy-paving reticulation
    paving_freq: float  # rad/mm: septal lines every pi / paving_freq mm
    paving_hu: float
    edge_width: float  # soft edge, in units of the radius
    edge_mod: float  # boundary shift by the smooth field, in units of the radius
    # confounders, same distribution for both classes
    atel_thick: Range  # dependent atelectasis at the base, mm
    plates: float  # mean number of plate-like (discoid) atelectases
    nodules: float  # mean number of nodules
    ggn_fraction: float  # share of nodules that are ground-glass nodules


STYLE_A = StyleParams(
    body_a=(140.0, 178.0),
    fat_fraction=(0.03, 0.16),
    fov=(340.0, 420.0),
    body_fill=0.86,
    lung_height=(0.8, 0.95),
    extent=(1.08, 1.22),
    thickness=(1.0, 1.0),
    inspiration=(0.0, 1.0),
    noise_sd=(10.0, 25.0),
    noise_smooth=0.6,
    noise_highpass=0.0,
    psf_sigma=(0.35, 0.7),
    sharpen=(0.0, 0.0),
    sharpen_sigma=1.5,
    peripheral_mm=25.0,
    count_mild=(1, 4),
    count_severe=(4, 9),
    diameter_mild=(24.0, 52.0),
    diameter_severe=(35.0, 90.0),
    lobes=(1, 1),
    ggo_hu_mild=(-620.0, -380.0),
    ggo_hu_severe=(-600.0, -300.0),
    core_prob=(0.0, 0.5),
    core_hu=(-100.0, 30.0),
    core_radius=(0.0, 0.0),
    paving_prob=(0.0, 0.6),
    paving_freq=0.32,
    paving_hu=140.0,
    edge_width=0.35,
    edge_mod=0.3,
    atel_thick=(4.0, 26.0),
    plates=0.0,
    nodules=1.5,
    ggn_fraction=0.0,
)

# Another site: larger patients reconstructed in a tighter field of view, deeper inspiration,
# thinner slices with gaps (HRCT-like), a sharp kernel (edge overshoot) with grainy noise, and
# fainter, lobulated, more often reticulated ground glass; plate atelectasis and ground-glass
# nodules in both classes.
STYLE_B = dataclasses.replace(
    STYLE_A,
    body_a=(150.0, 195.0),
    fat_fraction=(0.04, 0.15),
    fov=(320.0, 380.0),
    body_fill=0.94,
    lung_height=(0.88, 1.02),
    extent=(1.04, 1.14),
    thickness=(0.5, 0.75),
    inspiration=(0.4, 1.3),
    noise_sd=(25.0, 40.0),
    noise_smooth=0.4,
    noise_highpass=1.5,
    psf_sigma=(0.45, 0.65),
    sharpen=(0.5, 0.9),
    peripheral_mm=35.0,
    count_mild=(2, 5),
    count_severe=(5, 10),
    diameter_mild=(16.0, 36.0),
    diameter_severe=(28.0, 70.0),
    lobes=(2, 4),
    ggo_hu_mild=(-740.0, -500.0),
    ggo_hu_severe=(-700.0, -420.0),
    core_prob=(0.1, 0.7),
    core_hu=(-120.0, 40.0),
    core_radius=(0.3, 0.6),
    paving_prob=(0.5, 0.9),
    paving_freq=0.52,
    paving_hu=160.0,
    edge_width=0.2,
    edge_mod=0.45,
    atel_thick=(3.0, 20.0),
    plates=1.2,
    nodules=2.0,
    ggn_fraction=0.3,
)

STYLES = {PhantomStyle.A: STYLE_A, PhantomStyle.B: STYLE_B}


@dataclass(frozen=True)
class Lesion:
    """One ellipsoidal ground-glass patch (world mm, LPS), optionally with a consolidated core."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]  # along the rotated in-plane axes and z
    angle: float
    target_hu: float
    core_hu: float | None = None
    paving: bool = False
    paving_freq: float = 0.32  # rad/mm
    paving_hu: float = 140.0
    edge_width: float = 0.35  # radius units
    edge_mod: float = 0.3
    core_radius: float | None = None  # radius units; None: the core is where alpha > 0.75


@dataclass(frozen=True)
class Plate:
    """Plate-like (discoid) atelectasis: a thin dense band in the lung (world mm, LPS)."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]  # long in-plane, thin in-plane, along z
    angle: float
    hu: float


@dataclass(frozen=True)
class Nodule:
    """A small solid nodule (world mm, LPS)."""

    center: tuple[float, float, float]
    radius: float
    hu: float


@dataclass
class Phantom:
    """One synthetic chest CT in canonical orientation (see :mod:`data_prep.volume`).

    Attributes:
        hu: int16 HU, shape (z, y, x).
        spacing: voxel size in mm along (z, y, x).
        origin: LPS mm (x, y, z) of voxel (0, 0, 0).
        lesion_slices: bool (z,), True where the slice contains COVID ground glass.
        positive: COVID-positive.
        burden: "none", "mild" or "severe".
        lung_mask: bool (z, y, x), voxels at least half lung (truth for tests and demos).
        lesion_mask: bool (z, y, x), lung-mask voxels at least ``LESION_TRUTH_FRACTION``
            ground glass; ``lesion_slices`` is its projection on z.
        slice_thickness: mm; equals ``spacing[0]`` unless the style leaves gaps.
        style: the generator that drew it.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    lesion_slices: np.ndarray
    positive: bool
    burden: str
    lung_mask: np.ndarray | None = field(default=None, repr=False)
    lesion_mask: np.ndarray | None = field(default=None, repr=False)
    slice_thickness: float | None = None
    style: PhantomStyle = PhantomStyle.A

    @property
    def affine(self) -> np.ndarray:
        """4x4 map from (z, y, x, 1) indices to LPS mm (``data_prep.volume`` convention)."""
        aff = np.zeros((4, 4))
        aff[2, 0], aff[1, 1], aff[0, 2] = self.spacing
        aff[:3, 3] = self.origin
        aff[3, 3] = 1.0
        return aff


@dataclass(frozen=True)
class _Params:
    """Per-patient anatomy, all lengths in mm. Drawn once, then rendered chunk by chunk."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    bx: float  # body centre, world x / y
    by: float
    rot: float
    body_a: float  # body semi-axes (left-right, antero-posterior)
    body_b: float
    fat: float
    muscle: float
    cav_a: float  # thoracic cavity (inside the ribs)
    cav_b: float
    cav_v: float  # cavity centre, v offset (posterior wall is thicker: paraspinal muscles)
    z_base: float
    lung_height: float
    rib_period: float
    rib_phase: float
    rib_slope: float
    rib_hu: float
    vert_r: float
    vert_v: float
    vert_period: float
    vert_phase: float
    med_half: float
    heart_scale: float
    dome: tuple[float, float]  # right, left dome height (h units)
    table_y: float
    lung_hu: float
    gravity: float
    texture_sd: float
    vessel_w: float
    atel_thick: float
    atel_top: float
    atel_hu: float
    effusion: tuple[float, float]  # right, left thickness at the base (0 = none)
    noise_sd: float
    psf_sigma: float
    thickness: float  # slice thickness, mm (== spacing[0] for contiguous slices)
    sharpen: float
    lesions: tuple[Lesion, ...] = ()
    nodules: tuple[Nodule, ...] = ()
    plates: tuple[Plate, ...] = ()

    @property
    def lung_sides(self) -> tuple[tuple[int, float], ...]:
        """(side sign in u, lateral centre of the lung ellipse); right lung has u < 0."""
        return ((-1, 0.5 * self.cav_a), (1, 0.5 * self.cav_a))


def _grid64(value: float) -> float:
    return round(value * 64.0) / 64.0


def _maybe(rng: np.random.Generator, bounds: Range) -> float:
    """A uniform draw, or the constant without touching the generator when low == high."""
    lo, hi = bounds
    return lo if lo == hi else float(rng.uniform(lo, hi))


def _draw_params(rng: np.random.Generator, n_slices: int, matrix: int, s: StyleParams) -> _Params:
    u = rng.uniform
    body_a = u(*s.body_a)
    body_b = body_a * u(0.66, 0.8)
    fov = max(u(*s.fov), 2.0 * body_a / s.body_fill)
    fat = body_b * u(*s.fat_fraction)  # thicker fat comes with a larger body
    muscle = u(5.0, 10.0)
    rib_thick = u(8.0, 10.0)
    wall = fat + muscle + rib_thick
    cav_v = -u(4.0, 10.0)
    cav_a = body_a - wall
    cav_b = body_b - wall - abs(cav_v)
    lung_height = u(*s.lung_height) * (190.0 + 0.55 * body_a)
    extent = lung_height * u(*s.extent)
    base_margin = u(0.35, 0.75) * (extent - lung_height)
    # Geometry on a 1/64 mm grid: exact in float32 (NIfTI) and in short DICOM decimal strings,
    # so every reader recovers the same world position for every voxel.
    d_in = _grid64(fov / matrix)
    fov = d_in * matrix
    dz = _grid64(extent / n_slices)
    extent = dz * n_slices
    z_start = _grid64(-u(150.0, 450.0))
    origin = (
        _grid64(-fov / 2 + d_in / 2 + u(-10.0, 10.0)),
        _grid64(-fov / 2 + d_in / 2 + u(-25.0, 25.0)),
        _grid64(z_start + dz / 2),
    )
    centre = (origin[0] - d_in / 2 + fov / 2, origin[1] - d_in / 2 + fov / 2)
    inspiration = u(*s.inspiration)  # 1 = deep breath: darker, larger lungs; shallow: denser
    vert_r = u(15.0, 20.0)
    return _Params(
        shape=(n_slices, matrix, matrix),
        spacing=(dz, d_in, d_in),
        origin=origin,
        bx=centre[0] + u(-15.0, 15.0),
        by=centre[1] + u(-20.0, 10.0),
        rot=math.radians(u(-5.0, 5.0)),
        body_a=body_a,
        body_b=body_b,
        fat=fat,
        muscle=muscle,
        cav_a=cav_a,
        cav_b=cav_b,
        cav_v=cav_v,
        z_base=z_start + base_margin,
        lung_height=lung_height,
        rib_period=u(22.0, 28.0),
        rib_phase=u(0.0, 30.0),
        rib_slope=u(35.0, 60.0),
        rib_hu=u(600.0, 900.0),
        vert_r=vert_r,
        vert_v=cav_v + cav_b - 0.55 * vert_r,
        vert_period=u(24.0, 30.0),
        vert_phase=u(0.0, 30.0),
        med_half=u(20.0, 28.0),
        heart_scale=u(0.8, 1.05),
        dome=(u(0.2, 0.3) - 0.06 * inspiration, u(0.15, 0.23) - 0.06 * inspiration),
        table_y=centre[1] + body_b + u(8.0, 25.0),
        lung_hu=-790.0 - 90.0 * inspiration + rng.normal(0.0, 12.0),
        gravity=u(10.0, 90.0),
        texture_sd=u(12.0, 28.0),
        vessel_w=u(0.10, 0.18),
        atel_thick=0.0 if rng.random() < 0.15 else u(*s.atel_thick),
        atel_top=u(0.35, 0.75),
        atel_hu=u(-450.0, 20.0),
        effusion=(
            u(8.0, 35.0) if rng.random() < 0.1 else 0.0,
            u(8.0, 35.0) if rng.random() < 0.1 else 0.0,
        ),
        noise_sd=u(*s.noise_sd),
        psf_sigma=u(*s.psf_sigma),
        # Drawn last and only where the style varies them (style A's stream is unchanged).
        thickness=_grid64(dz * _maybe(rng, s.thickness)),
        sharpen=_maybe(rng, s.sharpen),
    )


# --- anatomy as functions of coordinates (any broadcastable arrays) ---------------------------


class _Anatomy:
    """Region tests and values over coordinate arrays; shared by rendering and point sampling.

    Quantities that depend only on (u, v) are computed on the in-plane arrays and broadcast along
    z, which keeps the 3D work to a few comparisons per voxel.
    """

    def __init__(self, p: _Params) -> None:
        self.p = p

    def patient_uv(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.p.rot), math.sin(self.p.rot)
        dx, dy = x - self.p.bx, y - self.p.by
        return (c * dx + s * dy).astype(np.float32), (-s * dx + c * dy).astype(np.float32)

    def height(self, z: np.ndarray) -> np.ndarray:
        return ((z - self.p.z_base) / self.p.lung_height).astype(np.float32)

    @staticmethod
    def superellipse(u: np.ndarray, v: np.ndarray, a: float, b: float, v0: float) -> np.ndarray:
        """Normalised radius; the posterior half is flatter (exponent 2.8) like a supine back."""
        vv = v - v0
        p = np.where(vv > 0, 2.8, 2.0)
        rho: np.ndarray = (np.abs(u / a) ** p + np.abs(vv / b) ** p) ** (1.0 / p)
        return rho

    def cavity_rho(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.superellipse(u, v, self.p.cav_a, self.p.cav_b, self.p.cav_v)

    def posterior_depth(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Distance (mm, along v) up to the posterior cavity wall: how 'dependent' a point is."""
        p = self.p
        t = np.clip(np.abs(u) / p.cav_a, 0.0, 1.0) ** 2.8
        wall: np.ndarray = p.cav_v + p.cav_b * (1.0 - t) ** (1.0 / 2.8)
        return wall - v

    def lung(self, u: np.ndarray, v: np.ndarray, h: np.ndarray) -> np.ndarray:
        """Boolean lung mask (both lungs) including dependent atelectasis, excluding effusion."""
        p = self.p
        inside = self.cavity_rho(u, v) < 1.0
        # Lungs shrink toward the apex (square-root profile: a dome-like apex).
        s2 = np.clip((1.0 - h) / 0.35, 0.0, 1.0)
        al, bl = 0.62 * p.cav_a, 1.05 * p.cav_b
        out = np.zeros(np.broadcast_shapes(u.shape, h.shape), dtype=bool)
        for i, (sign, uc) in enumerate(p.lung_sides):
            q = ((u - sign * uc) / al) ** 2 + ((v - p.cav_v - 0.12 * p.cav_b) / bl) ** 2
            # Diaphragm dome: highest centrally, lowest in the lateral and posterior recesses.
            qd = ((u - sign * 0.45 * p.cav_a) / (0.75 * p.cav_a)) ** 2 + (
                (v - p.cav_v + 0.15 * p.cav_b) / (1.0 * p.cav_b)
            ) ** 2
            dome = p.dome[i] * np.clip(1.0 - qd, 0.0, 1.0)
            side = (q < s2) & (h > dome) & (u * sign > 0)
            if p.effusion[i] > 0:
                side &= ~self.effusion(u, v, h, p.effusion[i])
            out |= side
        out &= inside
        out &= ~self.mediastinum(u, v, h)
        return out

    def effusion(self, u: np.ndarray, v: np.ndarray, h: np.ndarray, thick: float) -> np.ndarray:
        t = thick * np.clip(1.0 - h / 0.45, 0.0, 1.0)
        mask: np.ndarray = self.posterior_depth(u, v) < t
        return mask

    def heart_q(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        p = self.p
        c, s = math.cos(0.6), math.sin(0.6)
        du, dv = u - 0.18 * p.cav_a, v - (p.cav_v - 0.32 * p.cav_b)
        uu, vv = c * du + s * dv, -s * du + c * dv
        ha, hb = 0.5 * p.cav_a * p.heart_scale, 0.42 * p.cav_a * p.heart_scale
        q: np.ndarray = (uu / ha) ** 2 + (vv / hb) ** 2
        return q

    def heart_profile(self, h: np.ndarray) -> np.ndarray:
        """Squared scale of the heart's section: it sits on the diaphragm and ends at the hila."""
        prof: np.ndarray = np.clip(1.0 - ((h - 0.2) / 0.32) ** 2, 0.0, 1.0)
        return prof

    def mediastinum(self, u: np.ndarray, v: np.ndarray, h: np.ndarray) -> np.ndarray:
        """Everything between the lungs: central band, heart, spine, aorta, hila."""
        p = self.p
        # Narrow at the anterior junction, widest at the hila and great vessels.
        vn = (v - p.cav_v) / p.cav_b
        half = p.med_half * (0.55 + 0.45 * np.exp(-(((vn - 0.05) / 0.45) ** 2)))
        half = half * (1.0 + 0.4 * np.exp(-(((h - 0.6) / 0.12) ** 2)))
        med = np.abs(u) < half
        med |= self.heart_q(u, v) < self.heart_profile(h)
        spine = u**2 + (v - p.vert_v) ** 2 < (p.vert_r + 7.0) ** 2
        aorta = (u - 0.9 * p.vert_r) ** 2 + (v - p.vert_v + 1.3 * p.vert_r) ** 2 < 17.0**2
        med |= spine | (aorta & (h < 0.75))
        for sign in (-1, 1):
            hq = ((u - sign * (1.4 * p.med_half + 8.0)) / 16.0) ** 2 + (
                (v - p.cav_v + 0.05 * p.cav_b) / 20.0
            ) ** 2
            med |= hq + ((h - 0.5) / 0.1) ** 2 < 1.0
        return med

    def hilar_weight(self, u: np.ndarray, v: np.ndarray, h: np.ndarray) -> np.ndarray:
        """Closeness to the hila (separable Gaussian): vessels are thicker and denser there."""
        p = self.p
        g2 = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=np.float32)
        for sign in (-1, 1):
            g2 += np.exp(
                -((u - sign * (p.med_half + 15.0)) ** 2 + (v - p.cav_v) ** 2) / (2 * 45.0**2)
            ).astype(np.float32)
        gz = np.exp(-(((h - 0.5) / 0.3) ** 2)).astype(np.float32)
        w: np.ndarray = g2 * gz
        return w


# --- smooth random fields ---------------------------------------------------------------------


class _Fields:
    """Smooth Gaussian random fields on a coarse world grid, sampled by separable linear
    interpolation (cheaper than map_coordinates and the same everywhere a chunk is cut)."""

    def __init__(self, rng: np.random.Generator, p: _Params, *, channels: int, step: float) -> None:
        # Values are only needed inside the ribs (coordinates outside are clamped).
        reach = max(p.cav_a, p.cav_b) + 2 * step
        dz = p.spacing[0]
        self.lo = (p.origin[2] - dz, p.by - reach, p.bx - reach)
        span = (p.shape[0] * dz + 2 * dz, 2 * reach, 2 * reach)
        self.step = step
        shape = tuple(math.ceil(s / step) + 2 for s in span)
        data = rng.standard_normal((channels, *shape), dtype=np.float32)
        data = ndimage.gaussian_filter(data, sigma=(0, 1.2, 1.2, 1.2), mode="wrap", truncate=3.0)
        data /= data.std(axis=(1, 2, 3), keepdims=True) + 1e-6
        self.data = data

    def sample(self, zc: np.ndarray, yc: np.ndarray, xc: np.ndarray) -> np.ndarray:
        """Field values at the grid ``zc x yc x xc`` (world mm), shape (channels, z, y, x)."""
        out = self.data
        for axis, coords in ((1, zc), (2, yc), (3, xc)):
            t = (coords - self.lo[axis - 1]) / self.step
            n = out.shape[axis]
            i0 = np.clip(np.floor(t).astype(np.int64), 0, n - 2)
            w = np.clip(t - i0, 0.0, 1.0).astype(np.float32)
            shape = [1, 1, 1, 1]
            shape[axis] = -1
            w = w.reshape(shape)
            out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i0 + 1, axis=axis) * w
        return out


# --- findings ---------------------------------------------------------------------------------


def _sample_lung_points(
    anat: _Anatomy, rng: np.random.Generator, n: int, *, peripheral: float | None
) -> np.ndarray:
    """Up to ``n`` random world points (x, y, z) inside the lungs.

    With ``peripheral`` (mm), points lie within that distance of the chest wall and are drawn
    more often posteriorly and basally, where COVID-19 ground glass typically sits.
    """
    p = anat.p
    found: list[np.ndarray] = []
    for _ in range(40):
        m = 4096
        x = p.bx + rng.uniform(-p.cav_a, p.cav_a, m)
        y = p.by + p.cav_v + rng.uniform(-p.cav_b, p.cav_b, m)
        z = p.z_base + rng.uniform(0.0, p.lung_height, m)
        uu, vv = anat.patient_uv(x, y)
        hh = anat.height(z)
        ok = anat.lung(uu, vv, hh)
        if peripheral is not None:
            rho = anat.cavity_rho(uu, vv)
            r = np.hypot(uu, vv - p.cav_v)
            wall_dist = r * (1.0 / np.maximum(rho, 1e-3) - 1.0)
            ok &= wall_dist < peripheral
            keep = np.clip(0.6 + 0.4 * (vv - p.cav_v) / p.cav_b, 0.2, 1.0)
            keep *= np.clip(1.15 - hh, 0.3, 1.0)
            ok &= rng.random(m) < keep
        pts = np.stack([x, y, z], axis=1)[ok]
        found.append(pts)
        if sum(len(f) for f in found) >= n:
            break
    allpts = np.concatenate(found)[:n]
    return allpts


def _draw_findings(
    anat: _Anatomy, rng: np.random.Generator, *, positive: bool, burden: str, s: StyleParams
) -> tuple[tuple[Lesion, ...], tuple[Nodule, ...], tuple[Plate, ...]]:
    """COVID-19 patches (positives only), then the confounders both classes share; in this
    order, so a cohort's stream of random numbers stays what it was."""
    lesions = _draw_lesions(anat, rng, severe=burden == "severe", s=s) if positive else []
    nodules, plates = _draw_confounders(anat, rng, s)
    return tuple(lesions), tuple(nodules), tuple(plates)


def _draw_lesions(
    anat: _Anatomy, rng: np.random.Generator, *, severe: bool, s: StyleParams
) -> list[Lesion]:
    """Bilateral peripheral ground-glass patches, some lobulated, with cores or paving."""
    u = rng.uniform
    lesions: list[Lesion] = []
    for sign in (-1, 1):  # bilateral: both lungs
        count = int(rng.integers(*(s.count_severe if severe else s.count_mild)))
        pts = _sample_lung_points(anat, rng, 64, peripheral=s.peripheral_mm)
        uu, _ = anat.patient_uv(pts[:, 0], pts[:, 1])
        pts = pts[uu * sign > 0][:count]
        for x, y, z in pts:
            d = u(*s.diameter_severe) if severe else u(*s.diameter_mild)
            r = d / 2
            core, core_radius = None, None
            p_core = s.core_prob[int(severe)]
            if p_core > 0 and rng.random() < p_core:
                core = float(u(*s.core_hu))
                if s.core_radius != (0.0, 0.0):
                    core_radius = _maybe(rng, s.core_radius)
            radii = (r, r * u(0.7, 1.0), r * u(0.7, 1.0))
            angle = float(u(0, math.pi))
            target = float(u(*s.ggo_hu_severe) if severe else u(*s.ggo_hu_mild))
            p_paving = s.paving_prob[int(severe)]
            main = Lesion(
                center=(float(x), float(y), float(z)),
                radii=radii,
                angle=angle,
                target_hu=target,
                core_hu=core,
                paving=bool(p_paving > 0 and rng.random() < p_paving),
                paving_freq=s.paving_freq,
                paving_hu=s.paving_hu,
                edge_width=s.edge_width,
                edge_mod=s.edge_mod,
                core_radius=core_radius,
            )
            lesions.append(main)
            lo, hi = s.lobes
            n_lobes = lo if lo == hi else int(rng.integers(lo, hi + 1))
            # Lobulated patch: smaller lobes budding off the first one, same density.
            for _ in range(n_lobes - 1):
                phi, off, rl = u(0, 2 * math.pi), r * u(0.5, 0.9), r * u(0.45, 0.8)
                lesions.append(
                    dataclasses.replace(
                        main,
                        center=(
                            float(x + off * math.cos(phi)),
                            float(y + off * math.sin(phi)),
                            float(z + r * u(-0.4, 0.4)),
                        ),
                        radii=(rl, rl * u(0.6, 1.0), rl * u(0.6, 1.0)),
                        angle=float(u(0, math.pi)),
                        core_hu=None,
                        core_radius=None,
                    )
                )
    return lesions


def _draw_confounders(
    anat: _Anatomy, rng: np.random.Generator, s: StyleParams
) -> tuple[list[Nodule], list[Plate]]:
    """Nodules and plate atelectasis: same distribution for both classes (a confounder, never
    evidence); ground-glass nodules have the density of COVID ground glass."""
    u = rng.uniform
    n_nod = int(rng.poisson(s.nodules))
    nodules: list[Nodule] = []
    if n_nod:
        for x, y, z in _sample_lung_points(anat, rng, n_nod, peripheral=None):
            calcified = rng.random() < 0.15
            radius = float(u(2.0, 5.0) if rng.random() < 0.8 else u(5, 8))
            hu = float(u(250, 600) if calcified else u(10, 60))
            if s.ggn_fraction > 0 and rng.random() < s.ggn_fraction:
                radius, hu = float(u(3.0, 7.0)), float(u(-650.0, -450.0))
            nodules.append(Nodule(center=(float(x), float(y), float(z)), radius=radius, hu=hu))
    plates: list[Plate] = []
    n_plates = int(rng.poisson(s.plates)) if s.plates > 0 else 0
    if n_plates:
        pts = _sample_lung_points(anat, rng, 32, peripheral=None)
        for x, y, z in pts[anat.height(pts[:, 2]) < 0.5][:n_plates]:  # lower half of the lungs
            plates.append(
                Plate(
                    center=(float(x), float(y), float(z)),
                    radii=(float(u(12.0, 30.0)), float(u(1.5, 3.5)), float(u(6.0, 15.0))),
                    angle=float(u(0, math.pi)),
                    hu=float(u(-300.0, 0.0)),
                )
            )
    return nodules, plates


# --- rendering --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Fine sample centres (world mm) along z, y, x, the cavity crop and the height dither."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    crop: tuple[slice, slice]
    dither: np.ndarray  # (1, H, W), in lung-height units


def _grid(p: _Params, factor: int, sub: int, rng: np.random.Generator) -> _Grid:
    axes = []
    for n, d, o, f in (
        (p.shape[0], p.spacing[0], p.origin[2], sub),
        (p.shape[1], p.spacing[1], p.origin[1], factor),
        (p.shape[2], p.spacing[2], p.origin[0], factor),
    ):
        idx = np.arange(n * f, dtype=np.float64)
        axes.append((o - d / 2 + (idx + 0.5) * d / f).astype(np.float32))
    z, y, x = axes
    if p.thickness != p.spacing[0]:
        # Slices thinner than their spacing: sub-slices span only the slice's own thickness.
        k, j = np.divmod(np.arange(p.shape[0] * sub, dtype=np.float64), sub)
        z = (p.origin[2] + k * p.spacing[0] + (j + 0.5 - sub / 2) * p.thickness / sub).astype(
            np.float32
        )
    # Cavity bounding box, widened for the patient's rotation (<= 5 degrees) and a margin.
    tilt = math.sin(abs(p.rot))
    half_x = p.cav_a + tilt * p.cav_b + 8.0
    half_y = p.cav_b + tilt * p.cav_a + 8.0
    cy = p.by + p.cav_v * math.cos(p.rot)
    cx = p.bx - p.cav_v * math.sin(p.rot)
    crop = (_bbox(y, cy - half_y, cy + half_y), _bbox(x, cx - half_x, cx + half_x))
    step_h = p.thickness / sub / p.lung_height
    dither = rng.uniform(-0.5, 0.5, (1, len(y), len(x))).astype(np.float32) * step_h
    return _Grid(z, y, x, crop, dither)


def _bbox(coords: np.ndarray, lo: float, hi: float) -> slice:
    return slice(int(np.searchsorted(coords, lo)), int(np.searchsorted(coords, hi)))


def _render_chunk(
    anat: _Anatomy, fields: _Fields, vessels: _Fields, grid: _Grid, ks: slice
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, lung mask and lesion weight at the fine sample points of sub-slices ``ks``.

    Work inside the ribs runs on the cavity's bounding box only (a quarter of the field of
    view), and everything that does not change along z is drawn once in 2D.
    """
    zc, yc, xc = grid.z[ks], grid.y, grid.x
    u, v = anat.patient_uv(xc[None, None, :], yc[None, :, None])  # (1, H, W)
    shape = (len(zc), len(yc), len(xc))
    hu, rho_cav = _body_wall(anat, u, v, zc, yc, xc, shape)

    # Inside the ribs, on the cavity's bounding box.
    ys, xs = grid.crop
    u, v, rho_cav = u[:, ys, xs], v[:, ys, xs], rho_cav[:, ys, xs]
    yc, xc = yc[ys], xc[xs]
    # Height with a per-pixel dither inside each sub-slice: curved surfaces cut by thick
    # slices (diaphragm dome, apex, heart) average smoothly instead of in visible steps.
    h = anat.height(zc)[:, None, None] + grid.dither[:, ys, xs]
    sub = _mediastinum_and_spine(anat, hu[:, ys, xs], u, v, h, zc, rho_cav)
    lung = anat.lung(u, v, h)
    val, lesion = _lung_values(anat, fields, vessels, lung, u, v, h, (zc, yc, xc), rho_cav)
    sub = np.where(lung, val, sub)
    p = anat.p
    for i, (sign, _) in enumerate(p.lung_sides):
        if p.effusion[i] > 0:
            eff = anat.effusion(u, v, h, p.effusion[i]) & (rho_cav < 1) & (u * sign > 0)
            eff &= ~anat.mediastinum(u, v, h) & (h > -0.1)
            sub = np.where(eff, 12.0, sub)
    hu[:, ys, xs] = sub
    lung_full = np.zeros(shape, dtype=bool)
    lung_full[:, ys, xs] = lung
    lesion_full = np.zeros(shape, dtype=np.float32)
    lesion_full[:, ys, xs] = lesion
    return hu, lung_full, lesion_full


def _body_wall(
    anat: _Anatomy,
    u: np.ndarray,
    v: np.ndarray,
    zc: np.ndarray,
    yc: np.ndarray,
    xc: np.ndarray,
    shape: tuple[int, int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """HU of everything outside the cavity (z-invariant layers drawn once, then the ribs), and
    the cavity's superellipse radius."""
    p = anat.p
    # z-invariant layers: air, table, fat, muscle, mediastinal fat, sternum, posterior spine.
    rho_fat = anat.superellipse(u, v, p.body_a - p.fat, p.body_b - p.fat, 0.0)
    rho_cav = anat.cavity_rho(u, v)
    x2, y2 = xc[None, None, :], yc[None, :, None]
    table = np.abs(y2 - (p.table_y + 0.0006 * (x2 - p.bx) ** 2)) < 2.5
    plane = np.where(table, -150.0, HU_AIR)
    plane = np.where(anat.superellipse(u, v, p.body_a, p.body_b, 0.0) < 1, HU_FAT, plane)
    plane = np.where(rho_fat < 1, HU_MUSCLE, plane)
    plane = np.where(rho_cav < 1, -70.0, plane)
    sternum = (u / 13.0) ** 2 + ((v + p.body_b - p.fat - 0.5 * p.muscle) / 7.0) ** 2 < 1
    plane = np.where(sternum, 380.0, plane)
    cv = p.vert_v + p.vert_r + 9.0
    canal = u**2 + (v - cv) ** 2
    lamina = (canal < 14.0**2) & (canal > 8.0**2) & (v > cv - 4.0)
    spinous = (np.abs(u) < 4.0) & (v > cv) & (v < cv + 35.0)
    plane = np.where(lamina | spinous, 550.0, plane)
    plane = np.where(canal < 8.0**2, 15.0, plane)
    hu = np.broadcast_to(plane.astype(np.float32), shape).copy()

    # Ribs: oblique bands in the wall, higher posteriorly (they slope down toward the front),
    # so an axial slice cuts them as arcs.
    ring = (rho_cav >= 1) & (rho_fat < 1)
    ring &= anat.superellipse(u, v, p.cav_a + 12.0, p.cav_b + 12.0, p.cav_v) < 1
    ring &= ~((np.abs(u) < 25.0) & (v < 0))  # no ribs at the sternum (costal cartilage)
    iy, ix = np.nonzero(ring[0])
    if len(iy):
        ru, rv = u[0, iy, ix], v[0, iy, ix]
        g = 0.5 * (1.0 + rv / np.hypot(ru, rv).clip(1e-3))
        turns = (zc[:, None] + p.rib_slope * g[None, :] - p.rib_phase) / p.rib_period
        bone = np.cos(2 * math.pi * turns) > math.cos(math.pi * 11.0 / p.rib_period)
        hu[:, iy, ix] = np.where(bone, p.rib_hu, hu[:, iy, ix])
    return hu, rho_cav


def _mediastinum_and_spine(
    anat: _Anatomy,
    sub: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    h: np.ndarray,
    zc: np.ndarray,
    rho_cav: np.ndarray,
) -> np.ndarray:
    """Heart, great vessels, trachea and vertebral bodies drawn over ``sub``."""
    p = anat.p
    heart_q, heart_h = anat.heart_q(u, v), anat.heart_profile(h)
    sub = np.where((rho_cav < 1) & (h < 0.25), np.where(u < 25.0, 58.0, 45.0), sub)
    sub = np.where(heart_q < heart_h * 1.25, -90.0, sub)  # pericardial fat
    sub = np.where(heart_q < heart_h, HU_BLOOD, sub)
    dao = (u - 0.9 * p.vert_r) ** 2 + (v - p.vert_v + 1.3 * p.vert_r) ** 2 < 12.0**2
    aao = (u + 10.0) ** 2 + (v - p.cav_v + 0.3 * p.cav_b) ** 2 < 15.0**2
    sub = np.where(dao & (h < 0.78), HU_BLOOD, sub)
    sub = np.where(aao & (h > 0.42) & (h < 0.78), HU_BLOOD, sub)
    tr = u**2 + (v - (p.vert_v - p.vert_r - 14.0)) ** 2
    sub = np.where((tr < 11.0**2) & (h > 0.55), HU_SOFT, sub)
    sub = np.where((tr < 9.0**2) & (h > 0.55), HU_AIR, sub)
    # Vertebral bodies (cortex, cancellous bone) separated by discs.
    vr2 = u**2 + (v - p.vert_v) ** 2
    disc = np.cos((zc[:, None, None] - p.vert_phase) * (2 * math.pi / p.vert_period)) > 0.85
    cortex = vr2 > (0.82 * p.vert_r) ** 2
    return np.where(vr2 < p.vert_r**2, np.where(disc, 90.0, np.where(cortex, 650.0, 260.0)), sub)


def _lung_values(
    anat: _Anatomy,
    fields: _Fields,
    vessels: _Fields,
    lung: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    h: np.ndarray,
    zyx: tuple[np.ndarray, np.ndarray, np.ndarray],
    rho_cav: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Lung HU (inspiration level, gravity gradient, texture, atelectasis, lesions, vessels,
    nodules) and the lesion weight."""
    p = anat.p
    zc, yc, xc = zyx
    f = fields.sample(zc, yc, xc)
    vn = np.clip((v - p.cav_v) / p.cav_b, -1.0, 1.0)
    val = (p.lung_hu + 0.5 * p.gravity * vn) + p.texture_sd * f[0]
    if p.atel_thick > 0:
        thick = p.atel_thick * np.clip(1.0 - h / p.atel_top, 0.0, 1.0) + 1e-3
        a = np.clip(1.0 - anat.posterior_depth(u, v) / thick, 0.0, 1.0)
        val += (a * (0.75 + 0.25 * f[1].clip(-1, 1))) * (p.atel_hu - val)
    for plate in p.plates:
        _paint_plate(plate, val, zc, yc, xc)
    lesion = np.zeros(lung.shape, dtype=np.float32)
    for les in p.lesions:
        _paint_lesion(les, val, lesion, lung, f[1], zc, yc, xc)

    # Vessels: where two smooth fields both cross zero (a network of curved tubes), thicker
    # near the hila and pruned near the pleura; drawn after the lesions so that ground glass
    # keeps its vessels visible, as it does on real scans.
    wall_dist = np.hypot(u, v - p.cav_v) * (1.0 / np.maximum(rho_cav, 1e-3) - 1.0)
    width = p.vessel_w * np.clip(wall_dist / 20.0, 0.25, 1.0)
    width = width * (1.0 + 2.0 * anat.hilar_weight(u, v, h))
    fv = vessels.sample(zc, yc, xc)
    prof = np.clip(1.0 - np.maximum(np.abs(fv[0]), np.abs(fv[1])) / width, 0.0, 1.0)
    val += np.minimum(prof * 2.5, 1.0) * (HU_BLOOD - val)
    for nod in p.nodules:
        _paint_nodule(nod, val, zc, yc, xc)
    return val, lesion


def _paint_lesion(
    les: Lesion,
    val: np.ndarray,
    lesion: np.ndarray,
    lung: np.ndarray,
    mod: np.ndarray,
    zc: np.ndarray,
    yc: np.ndarray,
    xc: np.ndarray,
) -> None:
    """Blend one ground-glass patch into the lung values, restricted to the lung mask."""
    x0, y0, z0 = les.center
    reach = 1.35 * max(les.radii)
    sz = _bbox(zc, z0 - 1.35 * les.radii[2], z0 + 1.35 * les.radii[2])
    sy, sx = _bbox(yc, y0 - reach, y0 + reach), _bbox(xc, x0 - reach, x0 + reach)
    if sz.start >= sz.stop or sy.start >= sy.stop or sx.start >= sx.stop:
        return
    z = (zc[sz] - z0)[:, None, None]
    dy, dx = (yc[sy] - y0)[None, :, None], (xc[sx] - x0)[None, None, :]
    c, s = math.cos(les.angle), math.sin(les.angle)
    a, b = c * dx + s * dy, -s * dx + c * dy
    q = np.sqrt((a / les.radii[0]) ** 2 + (b / les.radii[1]) ** 2 + (z / les.radii[2]) ** 2)
    # Soft, irregular edge: the smooth field shifts the boundary by up to ~30% of the radius.
    t = np.clip((1.0 - q + les.edge_mod * mod[sz, sy, sx]) / les.edge_width, 0.0, 1.0)
    alpha = (t * t * (3 - 2 * t)) * lung[sz, sy, sx]
    if not alpha.any():
        return
    block = val[sz, sy, sx]
    target = np.full_like(block, les.target_hu)
    if les.paving:
        # Crazy paving: thickened interlobular septa as a warped polygonal grid (cells of
        # pi / paving_freq mm: ~10 mm in style A).
        w = 2.0 * mod[sz, sy, sx]
        fr = les.paving_freq
        ret = np.minimum(np.abs(np.cos(a * fr + w)), np.abs(np.cos(b * fr - w))) < 0.25
        target += les.paving_hu * ret
    # Ground glass only adds density: a patch over atelectasis or a vessel never lightens it.
    block += alpha * np.maximum(target - block, 0.0)
    if les.core_hu is not None and les.core_radius is not None:
        # Sharp-edged patches are near alpha 1 almost everywhere: place the core by radius.
        core = np.clip((les.core_radius - q) / 0.15, 0.0, 1.0) * lung[sz, sy, sx]
        block += core * (les.core_hu - block)
    elif les.core_hu is not None:
        core = np.clip((alpha - 0.75) / 0.2, 0.0, 1.0)
        block += core * (les.core_hu - block)
    val[sz, sy, sx] = block
    np.maximum(lesion[sz, sy, sx], alpha, out=lesion[sz, sy, sx])


def _paint_plate(
    plate: Plate, val: np.ndarray, zc: np.ndarray, yc: np.ndarray, xc: np.ndarray
) -> None:
    """Blend a thin band of atelectasis into the lung values (it only adds density)."""
    x0, y0, z0 = plate.center
    reach = max(plate.radii[:2]) + 2.0
    sz = _bbox(zc, z0 - plate.radii[2] - 2.0, z0 + plate.radii[2] + 2.0)
    sy, sx = _bbox(yc, y0 - reach, y0 + reach), _bbox(xc, x0 - reach, x0 + reach)
    if sz.start >= sz.stop or sy.start >= sy.stop or sx.start >= sx.stop:
        return
    dy, dx = (yc[sy] - y0)[None, :, None], (xc[sx] - x0)[None, None, :]
    c, s = math.cos(plate.angle), math.sin(plate.angle)
    a, b = c * dx + s * dy, -s * dx + c * dy
    r0, r1, r2 = plate.radii
    q = np.sqrt((a / r0) ** 2 + (b / r1) ** 2 + ((zc[sz] - z0)[:, None, None] / r2) ** 2)
    alpha = np.clip((1.0 - q) / 0.3, 0.0, 1.0)
    block = val[sz, sy, sx]
    block += alpha * np.maximum(plate.hu - block, 0.0)


def _paint_nodule(
    nod: Nodule, val: np.ndarray, zc: np.ndarray, yc: np.ndarray, xc: np.ndarray
) -> None:
    x0, y0, z0 = nod.center
    r = nod.radius
    sz, sy, sx = (_bbox(c, c0 - r - 2, c0 + r + 2) for c, c0 in ((zc, z0), (yc, y0), (xc, x0)))
    d = np.sqrt(
        (zc[sz] - z0)[:, None, None] ** 2
        + (yc[sy] - y0)[None, :, None] ** 2
        + (xc[sx] - x0)[None, None, :] ** 2
    )
    a = np.clip(r - d + 0.5, 0.0, 1.0)
    block = val[sz, sy, sx]
    val[sz, sy, sx] = block + a * (nod.hu - block)


def _supersampling(p: _Params) -> tuple[int, int]:
    """In-plane factor and sub-slices: fine samples of <= 3.6 mm in plane and <= 4.5 mm in z
    (within the slice thickness)."""
    factor = max(2, math.ceil(p.spacing[1] / 3.6))
    sub = max(2, min(6, math.ceil(p.thickness / 4.5)))
    return factor, sub


def _block_mean(a: np.ndarray, sub: int, factor: int) -> np.ndarray:
    """Mean over (sub x factor x factor) blocks: the partial-volume average of each voxel.

    Strided adds instead of ``reshape(...).mean(axis=(1, 3, 5))``, which is ~15x slower here.
    """
    s, hh, ww = a.shape
    zsum = a.reshape(s // sub, sub, hh * ww).sum(axis=1, dtype=np.float32)
    blocks = zsum.reshape(s // sub, hh // factor, factor, ww // factor, factor)
    out = blocks[:, :, 0, :, 0].copy()
    for i in range(factor):
        for j in range(factor):
            if i or j:
                out += blocks[:, :, i, :, j]
    out /= sub * factor * factor
    return out


def _scanner(hu: np.ndarray, noise: np.ndarray, p: _Params, s: StyleParams) -> np.ndarray:
    """What the scanner does to the rendered HU: in-plane point-spread blur, the kernel's
    sharpening, then noise that is itself spatially correlated; int16 HU."""
    hu = ndimage.gaussian_filter(hu, sigma=(0, p.psf_sigma, p.psf_sigma), mode="nearest")
    if p.sharpen > 0:
        # A sharp (bone / lung) reconstruction kernel: edges overshoot on both sides.
        sig = (0, s.sharpen_sigma, s.sharpen_sigma)
        hu += p.sharpen * (hu - ndimage.gaussian_filter(hu, sig, mode="nearest", truncate=3.0))
    noise = ndimage.gaussian_filter(noise, sigma=(0, s.noise_smooth, s.noise_smooth), mode="wrap")
    if s.noise_highpass > 0:
        # Grainy noise of a sharp kernel: its power moves to high spatial frequencies.
        sig = (0, s.noise_highpass, s.noise_highpass)
        noise -= ndimage.gaussian_filter(noise, sig, mode="wrap", truncate=3.0)
    noise *= p.noise_sd / max(float(noise.std()), 1e-6)
    return np.clip(np.rint(hu + noise), HU_MIN, HU_MAX).astype(np.int16)


def make_phantom(
    rng: np.random.Generator,
    *,
    n_slices: int,
    matrix: int,
    positive: bool,
    burden: str,
    style: PhantomStyle = PhantomStyle.A,
) -> Phantom:
    """Draw one synthetic chest CT.

    Args:
        rng: the patient's own generator; the same state gives the same phantom.
        n_slices: axial slices, spread over the lungs from below the base to above the apex.
        matrix: in-plane size (square).
        positive: COVID-positive (bilateral peripheral ground glass).
        burden: "none" for negatives; "mild" (1-3 patches of 2-5 cm per lung) or "severe"
            (4-8 larger patches per lung, consolidation, crazy paving) for positives; the
            numbers are style A's (see ``STYLE_B`` for the other site's).
        style: which generator (scanner, population, lesion appearance) draws the phantom.

    Returns:
        The phantom: int16 HU in canonical (z, y, x) orientation, geometry and truth.

    Raises:
        ValueError: inconsistent ``positive`` / ``burden`` or a size below 8.
    """
    if burden not in BURDENS:
        raise ValueError(f"burden must be one of {BURDENS}, got {burden!r}")
    if positive == (burden == "none"):
        raise ValueError(f"positive={positive} does not match burden={burden!r}")
    if n_slices < 2 or matrix < 8:
        raise ValueError(f"need n_slices >= 2 and matrix >= 8, got {n_slices} and {matrix}")
    s = STYLES[PhantomStyle(style)]
    p = _draw_params(rng, n_slices, matrix, s)
    anat = _Anatomy(p)
    lesions, nodules, plates = _draw_findings(anat, rng, positive=positive, burden=burden, s=s)
    p = dataclasses.replace(p, lesions=lesions, nodules=nodules, plates=plates)
    anat = _Anatomy(p)
    fields = _Fields(rng, p, channels=2, step=_TEXTURE_STEP_MM)
    vessels = _Fields(rng, p, channels=2, step=_VESSEL_STEP_MM)
    noise = rng.standard_normal(p.shape, dtype=np.float32)

    factor, sub = _supersampling(p)
    grid = _grid(p, factor, sub, rng)
    hu = np.empty(p.shape, dtype=np.float32)
    lung_frac = np.empty(p.shape, dtype=np.float32)
    lesion_frac = np.empty(p.shape, dtype=np.float32)
    per_slice = sub * len(grid.y) * len(grid.x)
    step = max(1, _CHUNK_VOXELS // per_slice)
    for k0 in range(0, n_slices, step):
        k1 = min(n_slices, k0 + step)
        fine_hu, fine_lung, fine_lesion = _render_chunk(
            anat, fields, vessels, grid, slice(k0 * sub, k1 * sub)
        )
        hu[k0:k1] = _block_mean(fine_hu, sub, factor)
        lung_frac[k0:k1] = _block_mean(fine_lung.astype(np.float32), sub, factor)
        lesion_frac[k0:k1] = _block_mean(fine_lesion, sub, factor)

    out = _scanner(hu, noise, p, s)
    lung_mask = lung_frac >= 0.5
    lesion_mask = (lesion_frac >= LESION_TRUTH_FRACTION) & lung_mask
    return Phantom(
        hu=out,
        spacing=p.spacing,
        origin=p.origin,
        lesion_slices=lesion_mask.any(axis=(1, 2)),
        positive=positive,
        burden=burden,
        lung_mask=lung_mask,
        lesion_mask=lesion_mask,
        slice_thickness=p.thickness,
        style=PhantomStyle(style),
    )
