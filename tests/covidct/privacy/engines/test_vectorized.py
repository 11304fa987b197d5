"""Both vectorized paths (one batched backward pass, tf.vectorized_map) add exactly each present
unit's clipped gradient."""

from __future__ import annotations

import pytest

from covidct.privacy.modes import ExecutionMode
from tests.covidct.privacy.engines.reference import assert_same, engine_sums


@pytest.mark.parametrize("impl", ["layerwise", "vectorized_map"])
def test_vectorized_adds_each_present_units_clipped_gradient(impl):
    got, want, name = engine_sums(ExecutionMode.VECTORIZED, "median", impl)
    assert name == impl
    assert_same(got, want)
