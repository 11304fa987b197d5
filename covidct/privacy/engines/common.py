"""What the engines share: one unit's loss and gradient."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from covidct.privacy.mechanism import unit_losses
from covidct.privacy.modes import UnitLoss
from covidct.tfsetup import tf


def unit_grads(
    model: Any,
    variables: Sequence[Any],
    unit_loss: UnitLoss,
    x: tf.Tensor,
    mask: tf.Tensor,
    y: tf.Tensor,
) -> tuple[list[tf.Tensor], tf.Tensor]:
    """One unit's gradient (zeros for variables it does not reach) and loss. x (k,H,W,1),
    mask (k,), y scalar."""
    with tf.GradientTape() as tape:
        logits = model(x, training=True)[:, 0]
        loss = unit_losses(logits[None], mask[None], y[None], unit_loss)[0]
    grads = tape.gradient(loss, variables)
    return [
        tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables, strict=True)
    ], loss
