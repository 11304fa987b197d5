"""HU windowing and 8-bit storage against hand values."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.intensity import LUNG_LEVEL, LUNG_WIDTH, gray8_to_unit, to_uint8, window


def test_the_lung_window_maps_its_edges_to_0_and_1_and_clips_beyond():
    hu = np.array([-1350.0, -600.0, 150.0, -2000.0, 3000.0])
    np.testing.assert_allclose(
        window(hu, level=LUNG_LEVEL, width=LUNG_WIDTH), [0.0, 0.5, 1.0, 0.0, 1.0]
    )
    with pytest.raises(ValueError, match="positive"):
        window(hu, level=0, width=0)


def test_storage_rounds_to_the_nearest_level_and_reads_back():
    u8 = to_uint8(np.array([0.0, 0.5, 1.0, 1.2, -0.1, 0.002]))
    assert u8.dtype == np.uint8 and list(u8) == [0, 128, 255, 255, 0, 1]
    np.testing.assert_allclose(gray8_to_unit(u8), u8 / 255.0)
