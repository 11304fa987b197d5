"""The non-private baseline's engine: the plain sum of the present units' gradients."""

from __future__ import annotations

from covidct.privacy.modes import ExecutionMode
from tests.covidct.privacy.engines.reference import assert_same, engine_sums


def test_unclipped_adds_the_present_units_gradients_unclipped():
    got, want, name = engine_sums(ExecutionMode.NANOBATCH, None)
    assert name == "unclipped"
    assert_same(got, want)
