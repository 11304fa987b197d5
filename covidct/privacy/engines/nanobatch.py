"""NanoBatch (Lee et al. 2021): a physical batch of ONE unit inside a ``tf.while_loop``, its
gradient clipped and added to the sums before the next unit; memory independent of the chunk."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from covidct.privacy.engines.common import unit_grads
from covidct.privacy.mechanism import Clipper
from covidct.privacy.modes import UnitLoss
from covidct.tfsetup import tf


class NanoBatch:
    name = "nanobatch"

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
        n = tf.shape(x)[0]

        def body(i: tf.Tensor) -> tf.Tensor:
            grads, unit = unit_grads(
                self.model, self.variables, self.unit_loss, x[i], mask[i], y[i]
            )
            factors = self.clipper.factors(grads, batched=False)
            for a, g, f in zip(acc, grads, factors, strict=True):
                a.assign_add(g * (f * present[i]))
            loss.assign_add(unit * present[i])
            return i + 1

        tf.while_loop(lambda i: i < n, body, [tf.constant(0)], parallel_iterations=1)
