"""What every fixed transform shares: the cache key, the window, one extractor."""

from __future__ import annotations

import json
from pathlib import Path

from covidct.features import from_record
from covidct.features.scattering import ScatteringSpec
from covidct.features.transform import cache_key

SPEC = ScatteringSpec(j=2, angles=8, grid=2)


def test_the_cache_key_follows_the_transform_and_the_slice_settings(prep: Path) -> None:
    settings = json.loads((prep / "dataset.json").read_text())["slices"]
    key = cache_key(SPEC, settings)
    assert key == cache_key(SPEC, dict(settings))
    assert key != cache_key(ScatteringSpec(j=2, angles=6, grid=2), settings)
    flipped = {**settings, "mask_outside_lungs": not settings["mask_outside_lungs"]}
    assert key != cache_key(SPEC, flipped)
    assert from_record(SPEC.record(settings)) == SPEC
