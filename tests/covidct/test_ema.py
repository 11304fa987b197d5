"""The moving average of the weights: averages, swaps in for evaluation and back, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.ema import Ema


def test_ema_averages_the_weights_and_swaps_back_the_live_ones():
    class Model:
        def __init__(self) -> None:
            self.w = [np.array([0.0])]

        def get_weights(self):
            return [a.copy() for a in self.w]

        def set_weights(self, ws):
            self.w = [np.array(a) for a in ws]

    m = Model()
    ema = Ema(0.5, m.get_weights())
    for value in (2.0, 4.0):
        m.w = [np.array([value])]
        ema.update(m)
    assert ema.state()[0][0] == pytest.approx(0.5 * (0.5 * 0 + 0.5 * 2) + 0.5 * 4)  # 2.5
    live = ema.swap_in(m)
    assert m.w[0][0] == pytest.approx(2.5)
    ema.swap_out(m, live)
    assert m.w[0][0] == 4.0
    off = Ema(0.0, m.get_weights())
    assert off.swap_in(m) is None and m.w[0][0] == 4.0


def test_a_restored_average_continues_where_the_checkpoint_left_it():
    ema = Ema(0.9, [np.array([1.0])])
    ema.restore([np.array([3.0])], [np.array([1.0])])
    assert ema.state()[0][0] == 3.0
    fresh = Ema(0.9, [np.array([1.0])])
    fresh.restore([], [np.array([7.0])])  # a checkpoint from before the average: start from w
    assert fresh.state()[0][0] == 7.0
