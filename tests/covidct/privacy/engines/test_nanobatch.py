"""NanoBatch adds, one unit at a time, exactly each present unit's clipped gradient."""

from __future__ import annotations

from covidct.privacy.modes import ExecutionMode
from tests.covidct.privacy.engines.reference import assert_same, engine_sums


def test_nanobatch_adds_each_present_units_clipped_gradient():
    got, want, name = engine_sums(ExecutionMode.NANOBATCH, "median")
    assert name == "nanobatch"
    assert_same(got, want)
