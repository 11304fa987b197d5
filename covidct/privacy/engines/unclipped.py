"""The non-private baseline: no clipping, so the sum of the units' gradients is the gradient of
the sum of their losses: one ordinary backward pass over the chunk."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from covidct.privacy.mechanism import unit_losses
from covidct.privacy.modes import UnitLoss
from covidct.tfsetup import tf


class Unclipped:
    name = "unclipped"

    def __init__(self, model: Any, variables: Sequence[Any], unit_loss: UnitLoss) -> None:
        self.model, self.variables, self.unit_loss = model, list(variables), unit_loss

    def add_chunk(
        self,
        acc: Sequence[tf.Variable],
        loss: tf.Variable,
        x: tf.Tensor,
        mask: tf.Tensor,
        y: tf.Tensor,
        present: tf.Tensor,
    ) -> None:
        shape = tf.shape(x)
        with tf.GradientTape() as tape:
            flat = tf.reshape(x, tf.concat([[-1], shape[2:]], 0))
            logits = tf.reshape(self.model(flat, training=True)[:, 0], shape[:2])
            losses = unit_losses(logits, mask, y, self.unit_loss)
            total = tf.reduce_sum(losses * present)
        grads = tape.gradient(total, self.variables)
        for a, g in zip(acc, grads, strict=True):
            if g is not None:
                a.assign_add(g)
        loss.assign_add(total)
