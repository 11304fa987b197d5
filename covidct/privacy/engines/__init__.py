"""The execution engines of the DP step: how a chunk of units becomes the sum of their clipped
gradients (``mechanism.ChunkEngine``). Each is its own module; all give the same sums (tested
against each other and against tensorflow-privacy):

- ``nanobatch``: one unit at a time inside a ``tf.while_loop`` (Lee et al. 2021);
- ``vectorized``: a whole chunk's per-unit gradients at once (one batched backward pass, or
  ``tf.vectorized_map``);
- ``unclipped``: the non-private baseline's ordinary backward pass;
- ``replicated``: what changes with several replicas (per-replica sums, one noise draw).

``make_engine`` picks one for a mode; ``covidct.privacy.step.DPGradient`` runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from covidct.privacy.mechanism import ChunkEngine, Clipper
from covidct.privacy.modes import ExecutionMode, UnitLoss

__all__ = ["make_engine"]


def make_engine(
    model: Any,
    variables: Sequence[Any],
    *,
    clipper: Clipper,
    mode: ExecutionMode,
    unit_loss: UnitLoss,
    vectorized_impl: str | None = None,
) -> tuple[ChunkEngine, str]:
    """The engine of ``mode`` (AUTO resolved by the caller), the unclipped one when the
    settings do not clip (the non-private baseline); and, in vectorized mode, how per-unit
    gradients are computed ("layerwise" or "vectorized_map"; "" otherwise).

    Args:
        vectorized_impl: "layerwise", "vectorized_map", or None (layerwise when the model
            allows it); checked whatever the mode.
    """
    from covidct.privacy.engines import nanobatch, unclipped, vectorized

    if vectorized_impl not in (None, "layerwise", "vectorized_map"):
        raise ValueError(f"unknown vectorized_impl {vectorized_impl!r}")
    if mode is ExecutionMode.AUTO:
        raise ValueError("resolve ExecutionMode.AUTO before building the DP step")
    how = ""
    if mode is ExecutionMode.VECTORIZED:
        chosen = vectorized.choose(model, variables, clipper, unit_loss, vectorized_impl)
        how = chosen.name
        if clipper.settings.clip_norm is not None:
            return chosen, how
    if clipper.settings.clip_norm is None:
        return unclipped.Unclipped(model, variables, unit_loss), how
    return nanobatch.NanoBatch(model, variables, clipper, unit_loss), how
