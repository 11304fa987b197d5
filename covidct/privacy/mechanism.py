"""The DP-SGD step: the ONLY place that clips gradients or adds noise.

One logical batch (all privacy units Poisson-sampled for a step) is processed in fixed-size
chunks of units, so memory does not grow with the logical batch:

1. per-unit gradient: the mean loss over the unit's slices (a patient contributes up to k slices);
2. clip each unit's gradient to L2 norm C (flat) or each parameter group g to C_g with
   sum_g C_g^2 = C^2 (per-layer), so one unit changes the sum by at most C;
3. accumulate the clipped sums over all chunks of the logical batch;
4. add N(0, sigma^2 C^2) ONCE per logical batch and divide by the EXPECTED batch size q*N
   (dividing by the realised size would leak it: Poisson subsampling's analysis assumes a fixed
   normaliser; Abadi et al. 2016, "Deep Learning with Differential Privacy", Alg. 1). The noise
   is keyed by the run's secret key (``covidct.privacy.secret``), never by a stored seed.

This module holds the pure pieces (each unit's loss, the clip formula and ``Clipper``, the
noise and the noisy mean) and the two protocols: ``DPStep`` (what training needs of a DP step)
and ``ChunkEngine`` (how a chunk of units adds its clipped gradients to the batch's sums).
``covidct.privacy.step.DPGradient`` is the DP step on one or several replicas; each engine is
its own module in ``covidct.privacy.engines``:
- ``nanobatch`` (the paper's method, Lee et al. 2021): a physical batch of ONE unit inside a
  tf.while_loop, gradient accumulation; the cheapest memory, exact per-unit clipping;
- ``vectorized``: per-unit gradients of a whole chunk at once: from one batched backward pass
  (covidct.privacy.per_unit, for models of Conv2D, Dense and GroupNormalization layers), else
  with tf.vectorized_map;
- ``unclipped``: the non-private baseline's plain backward pass;
- ``replicated``: the sums of several replicas, all-reduced with the noise on replica 0 only;
- the pipelined IPU step is ``covidct.ipu.pipeline.PipelinedDPGradient``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from covidct.privacy.modes import ClippingMode, ExecutionMode, UnitLoss
from covidct.privacy.secret import NOISE_DRAWS
from covidct.tfsetup import tf

__all__ = [
    "ChunkEngine",
    "Clipper",
    "ClippingMode",
    "DPSettings",
    "DPStep",
    "ExecutionMode",
    "UnitLoss",
    "clip_by_groups",
    "clip_factors",
    "gaussian_noise",
    "group_clip_norms",
    "noisy_mean",
    "unit_losses",
]

# Keeps the clip factor finite for a zero gradient (C / (0 + eps) is then clipped to 1).
_NORM_EPS = 1e-12


@dataclass(frozen=True)
class DPSettings:
    """What the mechanism needs; all privacy parameters in one frozen place.

    Attributes:
        clip_norm: C, the bound on one unit's contribution; None disables clipping (only for
            the non-private baseline and the equivalence tests).
        noise_multiplier: sigma; the noise std is sigma * C.
        expected_batch_size: q * N, the normaliser of the summed gradient.
        clipping: flat (one global norm) or per-layer (one norm per parameter group).
        proportional_split: per-layer only: C_g^2 proportional to the group's parameter count
            (else an equal split); either way sum_g C_g^2 = C^2.
    """

    clip_norm: float | None
    noise_multiplier: float
    expected_batch_size: float
    clipping: ClippingMode = ClippingMode.FLAT
    proportional_split: bool = False

    def __post_init__(self) -> None:
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"clip_norm must be positive, got {self.clip_norm}")
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.noise_multiplier > 0 and self.clip_norm is None:
            raise ValueError("noise without clipping has no privacy meaning: set clip_norm")
        if self.expected_batch_size <= 0:
            raise ValueError(f"expected_batch_size must be > 0, got {self.expected_batch_size}")


def group_clip_norms(sizes: Sequence[int], *, clip_norm: float, proportional: bool) -> list[float]:
    """Per-group bounds C_g with sum_g C_g^2 = C^2, so the whole unit stays within C.

    Args:
        sizes: number of parameters in each group (a layer, or a pipeline stage).
        clip_norm: the total bound C.
        proportional: C_g^2 proportional to the group's size; else equal split.
    """
    weights = [float(s) if proportional else 1.0 for s in sizes]
    total = sum(weights)
    return [clip_norm * (w / total) ** 0.5 for w in weights]


def clip_factors(sq_norms: Sequence[tf.Tensor], *, bounds: Sequence[float]) -> list[tf.Tensor]:
    """min(1, C_g / ||g_g||) for each group g: the factor that brings the group within C_g.

    The one clip formula of the project: flat clipping is the case of one group with C_1 = C.

    Args:
        sq_norms: each group's squared L2 norm (a scalar, or one value per unit).
        bounds: each group's bound C_g.
    """
    return [
        tf.minimum(1.0, c / (tf.sqrt(s) + _NORM_EPS)) for c, s in zip(bounds, sq_norms, strict=True)
    ]


def clip_by_groups(
    grads: Sequence[tf.Tensor], group_of_var: Sequence[int], *, bounds: Sequence[float]
) -> list[tf.Tensor]:
    """One unit's gradient with each parameter group clipped to its own bound C_g.

    Each group's norm and factor depend on that group's gradients only, so a pipeline stage
    can clip its own group without seeing the rest (``covidct.ipu.pipeline``).

    Args:
        grads: one unit's gradient, one tensor per variable (no unit axis).
        group_of_var: the group of each variable.
        bounds: C_g per group, with sum_g C_g^2 = C^2 (``group_clip_norms``).
    """
    sq: list[tf.Tensor | None] = [None] * len(bounds)
    for g, k in zip(grads, group_of_var, strict=True):
        part = tf.reduce_sum(tf.square(g))
        sq[k] = part if sq[k] is None else sq[k] + part
    factors = clip_factors([tf.constant(0.0) if s is None else s for s in sq], bounds=bounds)
    return [g * factors[k] for g, k in zip(grads, group_of_var, strict=True)]


def gaussian_noise(index: int, like: tf.Tensor, *, std: float, noise_seed: tf.Tensor) -> tf.Tensor:
    """N(0, std^2) shaped like ``like``, for variable ``index`` of the step ``noise_seed`` keys.

    ``noise_seed`` (2 x int64) comes from the run's secret key (``RunSecret.noise_seed``), never
    from a stored seed: whoever can regenerate the noise can subtract it. Each value is the sum
    of ``NOISE_DRAWS`` independent draws of N(0, std^2 / NOISE_DRAWS), which resists the
    floating-point attacks on a single sampler call (Holohan & Braghin 2021; Opacus' secure
    mode does the same).
    """
    seed = tf.random.experimental.stateless_fold_in(tf.cast(noise_seed, tf.int64), index)
    shape = tf.concat([[NOISE_DRAWS], tf.shape(like)], 0)
    draws = tf.random.stateless_normal(shape, seed=seed, dtype=like.dtype)
    return (std / math.sqrt(NOISE_DRAWS)) * tf.reduce_sum(draws, axis=0)


def noisy_mean(
    sums: Sequence[tf.Tensor],
    *,
    settings: DPSettings,
    noise_seed: tf.Tensor,
    noise_weight: tf.Tensor | float = 1.0,
) -> list[tf.Tensor]:
    """(clipped sum + ONE draw of N(0, sigma^2 C^2)) / (q N) for one logical batch.

    Divides by the EXPECTED batch size q*N, never the realised one (Abadi et al. 2016, Alg. 1).
    ``noise_weight`` 0 leaves the noise out: the replicas of one step all call this and only
    replica 0 adds the step's one draw before their results are summed.
    """
    out = []
    for i, total in enumerate(sums):
        g = tf.identity(total)
        if settings.noise_multiplier > 0:
            assert settings.clip_norm is not None  # enforced by DPSettings
            std = settings.noise_multiplier * settings.clip_norm
            g = g + noise_weight * gaussian_noise(i, g, std=std, noise_seed=noise_seed)
        out.append(g / settings.expected_batch_size)
    return out


LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


@runtime_checkable
class DPStep(Protocol):
    """What training needs of a DP step, whatever executes it (``step.DPGradient``: NanoBatch,
    vectorized, replicated; ``covidct.ipu.pipeline.PipelinedDPGradient``: pipelined on IPUs):
    one logical batch of units in, each unit's gradient clipped on its own, the clipped sum
    plus Gaussian noise drawn ONCE divided by the expected batch size, and the optimizer
    applied."""

    def run_batch(
        self,
        rounds: Iterable[Mapping[int, Sequence[Any]]],
        optimizer: Any,
        *,
        step: int,
        read_loss: bool = False,
    ) -> float | None:
        """Train on one logical batch (``rounds`` of per-replica chunks); the mean unit loss
        when ``read_loss`` (console only: computed without noise), else None."""
        ...


class Clipper:
    """Each unit's clip factors: one norm C over the whole gradient (flat), or a norm C_g per
    group of variables with sum_g C_g^2 = C^2 (per-layer: a layer, or a pipeline stage)."""

    def __init__(
        self, settings: DPSettings, variables: Sequence[Any], groups: Sequence[Sequence[int]]
    ) -> None:
        self.settings = settings
        self.group_of_var = [0] * len(variables)
        for g, members in enumerate(groups):
            for i in members:
                self.group_of_var[i] = g
        self.n_groups = len(groups)
        self.group_norms: list[float] = []
        if settings.clipping is ClippingMode.PER_LAYER and settings.clip_norm is not None:
            sizes = [sum(int(tf.size(variables[i])) for i in members) for members in groups]
            self.group_norms = group_clip_norms(
                sizes, clip_norm=settings.clip_norm, proportional=settings.proportional_split
            )

    def factors(self, grads: Sequence[tf.Tensor], *, batched: bool) -> list[tf.Tensor]:
        """Multiplier per variable that brings the unit (or each of its groups) within bound;
        ``batched``: the gradients have a leading unit axis (one factor per unit)."""
        c = self.settings.clip_norm
        if c is None:
            one = tf.ones([tf.shape(grads[0])[0]]) if batched else tf.constant(1.0)
            return [one] * len(grads)

        def sq(g: tf.Tensor) -> tf.Tensor:
            axes = list(range(1, len(g.shape))) if batched else None
            return tf.reduce_sum(tf.square(g), axis=axes)

        if self.settings.clipping is ClippingMode.FLAT:
            (f,) = clip_factors([tf.add_n([sq(g) for g in grads])], bounds=[c])
            return [f] * len(grads)
        group_sq = [tf.zeros_like(sq(grads[0])) for _ in range(self.n_groups)]
        for i, g in enumerate(grads):
            group_sq[self.group_of_var[i]] += sq(g)
        factors = clip_factors(group_sq, bounds=self.group_norms)
        return [factors[self.group_of_var[i]] for i in range(len(grads))]


class ChunkEngine(Protocol):
    """How one chunk of units adds to the logical batch's sums: ``acc`` (one variable per
    trainable variable) gets the sum over the PRESENT units of each unit's clipped gradient,
    ``loss`` the sum of their losses. One module per engine (``covidct.privacy.engines``)."""

    name: str

    def add_chunk(
        self,
        acc: Sequence[tf.Variable],
        loss: tf.Variable,
        x: tf.Tensor,
        mask: tf.Tensor,
        y: tf.Tensor,
        present: tf.Tensor,
    ) -> None: ...


def unit_losses(
    logits: tf.Tensor, mask: tf.Tensor, y: tf.Tensor, kind: UnitLoss = UnitLoss.MEAN
) -> tf.Tensor:
    """Each unit's loss from its slices' logits.

    ``mean``: the mean binary cross-entropy over the unit's valid slices, each slice labelled
    with the unit's label. ``lse``: the cross-entropy of ONE unit logit, the log-mean-exp of its
    valid slice logits, a smooth maximum (multiple-instance learning: a positive patient is
    explained by its lesion slices without pushing its clear slices up; a negative one pushes
    all down). ``mean-logit``: the cross-entropy of the mean of the valid slice logits (for a
    linear head, logistic regression on the unit's mean slice features). Each way the loss
    depends on the unit's own slices only, so per-unit clipping stays exact.

    Args:
        logits: (U, k) slice logits; mask: (U, k), 1 for a real slice; y: (U,) unit labels.
        kind: mean, lse or mean-logit.

    Returns:
        (U,) losses; a unit without valid slices has loss 0 (and so a zero gradient).
    """
    n_valid = tf.reduce_sum(mask, axis=1)
    if kind is UnitLoss.LSE:
        masked = tf.where(mask > 0, logits, tf.fill(tf.shape(logits), -1e9))
        unit_logit = tf.reduce_logsumexp(masked, axis=1) - tf.math.log(tf.maximum(n_valid, 1.0))
        per_unit = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=unit_logit)
        return tf.where(n_valid > 0, per_unit, tf.zeros_like(per_unit))
    if kind is UnitLoss.MEAN_LOGIT:
        unit_logit = tf.reduce_sum(logits * mask, axis=1) / tf.maximum(n_valid, 1.0)
        per_unit = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=unit_logit)
        return tf.where(n_valid > 0, per_unit, tf.zeros_like(per_unit))
    labels = tf.broadcast_to(y[:, None], tf.shape(logits))
    per_slice = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(per_slice * mask, axis=1) / tf.maximum(n_valid, 1.0)
