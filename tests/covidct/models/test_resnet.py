"""The GroupNorm ResNet: basic blocks as asked, the map halved per stage, per-example."""

from __future__ import annotations

import numpy as np

from covidct.models.resnet import build_gn_resnet
from covidct.models.validation import validate_model


def test_blocks_and_widths_follow_the_settings():
    model = build_gn_resnet(input_size=32, seed=0, blocks=(1, 1), base_width=4, groups=2)
    validate_model(model)
    convs = [layer for layer in model.layers if isinstance(layer.get_config().get("filters"), int)]
    widths = sorted({c.filters for c in convs})
    assert widths[:2] == [4, 8]  # the second stage doubles the width
    x = np.random.default_rng(1).random((3, 32, 32, 1)).astype(np.float32)
    together = model(x).numpy()
    alone = np.concatenate([model(x[i : i + 1]).numpy() for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
