"""The building blocks: group counts GroupNorm accepts, and every pooling gives one logit per
slice that depends on that slice alone (per-example clipping needs it)."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.models.layers import Pooling, centre_input, conv_gn_act, group_count, pool_to_logit
from covidct.tfsetup import keras


def test_group_count_is_the_largest_divisor_not_above_the_request():
    assert group_count(16, 8) == 8 and group_count(12, 8) == 6 and group_count(7, 8) == 7
    assert group_count(5, 4) == 1 and group_count(3, 0) == 1


@pytest.mark.parametrize("pooling", list(Pooling), ids=[p.value for p in Pooling])
def test_each_pooling_gives_one_logit_per_slice_from_that_slice_alone(pooling):
    inputs = keras.Input((16, 16, 1))
    x = conv_gn_act(centre_input(inputs), 6, seed=1, name="b", groups=4)
    model = keras.Model(inputs, pool_to_logit(x, pooling, seed=2))
    batch = np.random.default_rng(0).random((4, 16, 16, 1)).astype(np.float32)
    together = model(batch).numpy()
    alone = np.concatenate([model(batch[i : i + 1]).numpy() for i in range(4)])
    assert together.shape == (4, 1)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    assert "b_gn" in {layer.name for layer in model.layers}
