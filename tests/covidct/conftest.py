"""Fixtures of the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _deterministic_tensorflow() -> None:
    """Same results whatever ran before and however busy the CPU is (thread-order-dependent
    float sums otherwise make long memorisation runs drift between test orders)."""
    from covidct.tfsetup import tf

    tf.config.experimental.enable_op_determinism()
