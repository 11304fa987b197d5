"""An exponential moving average of a model's weights (De et al. 2022, "Unlocking
High-Accuracy Differentially Private Image Classification through Scale").

It is computed from the noisy iterates only, so it is post-processing and costs no privacy;
training validates, keeps and saves the averaged weights. It is checkpointed (``state``,
``restore``), so a resumed run continues it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Ema"]


class Ema:
    """Exponential moving average of a model's weights; decay 0 = off (the live weights)."""

    def __init__(self, decay: float, weights: list[np.ndarray]) -> None:
        self.decay = decay
        self.avg = [np.array(w, copy=True) for w in weights] if decay else []

    def update(self, model: Any) -> None:
        if self.decay:
            d = self.decay
            self.avg = [
                d * a + (1 - d) * w for a, w in zip(self.avg, model.get_weights(), strict=True)
            ]

    def state(self) -> list[np.ndarray]:
        return list(self.avg)

    def restore(self, arrays: list[np.ndarray], weights: list[np.ndarray]) -> None:
        if self.decay:
            self.avg = list(arrays) if arrays else [np.array(w, copy=True) for w in weights]

    def swap_in(self, model: Any) -> list[np.ndarray] | None:
        """Put the average into ``model``; returns the live weights (None when off)."""
        if not self.decay:
            return None
        live = model.get_weights()
        model.set_weights(self.avg)
        return live

    def swap_out(self, model: Any, live: list[np.ndarray] | None) -> None:
        if live is not None:
            model.set_weights(live)
