"""Vectorized: the per-unit gradients of a whole chunk at once, then clipped and summed.

``Layerwise`` takes them from ONE batched backward pass (``covidct.privacy.per_unit``: a
layer's weight gradient is a sum over examples of input x output-gradient, kept per unit;
Conv2D, Dense and GroupNormalization layers); ``VectorizedMap`` maps the one-unit gradient
over the chunk with ``tf.vectorized_map`` (any model)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from covidct.privacy.engines.common import unit_grads
from covidct.privacy.mechanism import ChunkEngine, Clipper, unit_losses
from covidct.privacy.modes import UnitLoss
from covidct.privacy.per_unit import LayerwisePerUnit, unsupported_reason
from covidct.tfsetup import tf

logger = logging.getLogger(__name__)


def add_clipped(
    clipper: Clipper,
    acc: Sequence[tf.Variable],
    grads: Sequence[tf.Tensor],
    present: tf.Tensor,
) -> None:
    """Clip each unit's gradients (leading axis = unit) and add the present ones."""
    factors = clipper.factors(grads, batched=True)
    for a, g, f in zip(acc, grads, factors, strict=True):
        a.assign_add(tf.tensordot(f * present, g, axes=1))


class Layerwise:
    name = "layerwise"

    def __init__(
        self, model: Any, variables: Sequence[Any], clipper: Clipper, unit_loss: UnitLoss
    ) -> None:
        self.clipper = clipper
        self._per_unit = LayerwisePerUnit(
            model, list(variables), functools.partial(unit_losses, kind=unit_loss)
        )

    def add_chunk(
        self,
        acc: Sequence[tf.Variable],
        loss: tf.Variable,
        x: tf.Tensor,
        mask: tf.Tensor,
        y: tf.Tensor,
        present: tf.Tensor,
    ) -> None:
        grads, losses = self._per_unit.grads(x, mask, y)
        add_clipped(self.clipper, acc, grads, present)
        loss.assign_add(tf.reduce_sum(losses * present))


class VectorizedMap:
    name = "vectorized_map"

    def __init__(
        self, model: Any, variables: Sequence[Any], clipper: Clipper, unit_loss: UnitLoss
    ) -> None:
        self.model, self.variables = model, list(variables)
        self.clipper, self.unit_loss = clipper, unit_loss

    def add_chunk(
        self,
        acc: Sequence[tf.Variable],
        loss: tf.Variable,
        x: tf.Tensor,
        mask: tf.Tensor,
        y: tf.Tensor,
        present: tf.Tensor,
    ) -> None:
        def per_unit(
            args: tuple[tf.Tensor, tf.Tensor, tf.Tensor],
        ) -> tuple[list[tf.Tensor], tf.Tensor]:
            return unit_grads(self.model, self.variables, self.unit_loss, *args)

        grads, losses = tf.vectorized_map(per_unit, (x, mask, y))
        add_clipped(self.clipper, acc, grads, present)
        loss.assign_add(tf.reduce_sum(losses * present))


def choose(
    model: Any,
    variables: Sequence[Any],
    clipper: Clipper,
    unit_loss: UnitLoss,
    impl: str | None,
) -> ChunkEngine:
    """``Layerwise`` when the model allows it and ``impl`` does not say otherwise, else
    ``VectorizedMap``; ``impl`` "layerwise" on a model it cannot take is an error."""
    reason = unsupported_reason(model)
    if reason is not None and impl == "layerwise":
        raise ValueError(f"layerwise per-unit gradients do not apply: {reason}")
    if impl == "vectorized_map":
        reason = "vectorized_map requested"
    if reason is None:
        return Layerwise(model, variables, clipper, unit_loss)
    logger.info("per-unit gradients with tf.vectorized_map: %s", reason)
    return VectorizedMap(model, variables, clipper, unit_loss)
