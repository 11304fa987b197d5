"""The GroupNorm CNN: its shape follows its settings, and one seed gives one model."""

from __future__ import annotations

import numpy as np

from covidct.models.cnn import build_gn_cnn
from covidct.models.validation import validate_model


def test_widths_and_stages_shape_the_model_and_it_stays_per_example():
    model = build_gn_cnn(input_size=32, seed=3, widths=(4, 8), convs_per_stage=2)
    convs = [layer for layer in model.layers if layer.name.endswith("_conv")]
    assert [c.filters for c in convs] == [4, 4, 8, 8]
    validate_model(model)  # no layer mixes examples
    again = build_gn_cnn(input_size=32, seed=3, widths=(4, 8), convs_per_stage=2)
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert model(np.zeros((2, 32, 32, 1), np.float32)).shape == (2, 1)
