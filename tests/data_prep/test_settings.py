"""Slice settings: recorded as plain values, read back, and old folders keep their old values."""

from __future__ import annotations

import pytest

from data_prep.settings import RECORDED_BEFORE, Crop, SliceSettings


def test_settings_round_trip_through_their_record():
    s = SliceSettings(image_size=64, crop=Crop.LUNGS, mask_outside_lungs=False)
    record = s.as_dict()
    assert record["crop"] == "lungs" and isinstance(record["crop"], str)
    assert SliceSettings.from_recorded(record) == s
    assert SliceSettings(crop="lungs").crop is Crop.LUNGS  # type: ignore[arg-type]


def test_a_record_from_before_a_setting_existed_takes_the_value_it_was_made_with():
    old = {k: v for k, v in SliceSettings().as_dict().items() if k not in RECORDED_BEFORE}
    back = SliceSettings.from_recorded(old)
    assert back.crop is Crop.NONE and back.mask_outside_lungs is False
    assert SliceSettings().mask_outside_lungs is True  # today's default differs


def test_an_unknown_crop_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"slices\.crop must be one of none, lungs"):
        SliceSettings(crop="chest")  # type: ignore[arg-type]
