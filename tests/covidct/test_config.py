from pathlib import Path

import pytest

from covidct.config import Config, load_config, to_dict
from data_prep.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_default_yaml_matches_the_built_in_defaults():
    # configs/default.yaml documents every setting: it must say what the code does
    assert to_dict(load_config(CONFIGS / "default.yaml")) == to_dict(Config())


def test_demo_config_trains_the_default_model_from_scratch():
    cfg = load_config(CONFIGS / "demo.yaml")
    assert cfg.synth.n_patients == 600
    assert cfg.train == Config().train  # the demo shows what the defaults do
    assert not cfg.train.initial_weights


def test_cnn_config_holds_a_cnn_recipe():
    cfg = load_config(CONFIGS / "cnn.yaml")
    assert cfg.train.model == "gn_cnn_small" and cfg.train.batch_size > 0


def test_set_overrides_nested_values_with_yaml_types():
    cfg = load_config(None, ["prepare.slices.image_size=128", "prepare.split=[0.8, 0.1, 0.1]"])
    assert cfg.prepare.slices.image_size == 128
    assert cfg.prepare.split == (0.8, 0.1, 0.1)


def test_unknown_key_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("prepare:\n  slices:\n    imagesize: 32\n")
    with pytest.raises(ConfigError, match=r"prepare\.slices\.imagesize"):
        load_config(bad)


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="expected int"):
        load_config(None, ["prepare.slices.image_size=big"])


def test_enum_values_are_checked():
    with pytest.raises(ConfigError, match="not one of"):
        load_config(None, ["synth.formats=dicomish"])


def test_the_crop_is_one_of_its_choices_from_a_file_or_from_code():
    from data_prep.settings import Crop, SliceSettings

    bad = r"prepare\.slices\.crop: 'body' is not one of none, lungs"
    with pytest.raises(ConfigError, match=bad):
        load_config(None, ["prepare.slices.crop=body"])
    cfg = load_config(None, ["prepare.slices.crop=lungs", "prepare.slices.mask_outside_lungs=true"])
    assert cfg.prepare.slices.crop is Crop.LUNGS and cfg.prepare.slices.mask_outside_lungs
    with pytest.raises(ValueError, match=r"slices\.crop must be one of none, lungs"):
        SliceSettings(crop="body")  # type: ignore[arg-type]
    assert SliceSettings(crop="lungs").as_dict()["crop"] == "lungs"  # type: ignore[arg-type]
