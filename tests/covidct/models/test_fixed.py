"""The default model family end to end: fixed features (attenuation, the default, and
scattering), a linear head trained with full-batch DP-GD on the cached features, and a saved
model that takes slices."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from covidct.config import ConfigError
from covidct.data.units import PrivacyUnit, load_units
from covidct.features.cache import FeatureStore, feature_stats
from covidct.models import DEFAULT_MODEL, feature_spec
from covidct.train import train
from covidct.train_config import TrainConfig

FAST = TrainConfig(epochs=6, seed=1)  # the defaults: attenuation, q = 1, EMA


@pytest.fixture(scope="module", params=["attenuation", "scattering"])
def scatter_run(request, prep: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("feature_runs")
    said: list[str] = []
    config = replace(FAST, model=request.param)
    result = train(
        prep, config=config, target_epsilon=3.0, runs_dir=root, run_id="s", on_event=said.append
    )
    return result, said


def test_the_default_model_is_a_feature_head():
    assert TrainConfig().model == DEFAULT_MODEL == "attenuation"
    assert feature_spec(DEFAULT_MODEL) is not None


def test_a_feature_model_is_a_head_trained_on_cached_features(scatter_run, prep):
    result, said = scatter_run
    meta = json.loads((result.run_dir / "run.json").read_text())
    spec = feature_spec(meta["model"])
    assert meta["features"]["transform"] == spec.transform_id
    assert (prep / "features" / f"{spec.name}-{meta['features']['cache_key']}").is_dir()
    assert result.privacy.sampling_rate == 1.0 and result.privacy.steps == 6
    assert any(m.startswith("features:") for m in said)


def test_the_saved_model_takes_slices_and_loads_after_one_import(scatter_run, prep):
    import covidct.features  # noqa: F401  (the one import: registers the transforms' layers)
    from covidct.tfsetup import keras

    result, _ = scatter_run
    model = keras.models.load_model(result.run_dir / "model.keras", compile=False)
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert model.input_shape == (None, 32, 32, 1)
    assert model.count_params() == feature_spec(meta["model"]).size + 1


def test_features_are_standardised_with_validation_statistics_never_training_ones(
    scatter_run, prep
):
    from covidct.tfsetup import keras

    result, _ = scatter_run
    model = keras.models.load_model(result.run_dir / "model.keras", compile=False)
    norm = model.get_layer("standardise")
    meta = json.loads((result.run_dir / "run.json").read_text())
    store = FeatureStore(prep, feature_spec(meta["model"]))

    def stats(split: str):
        units = load_units(prep, split, PrivacyUnit.PATIENT)
        return feature_stats(store, [r for refs in units.slices for r in refs])

    val_mean, val_var = stats("validation")
    train_mean, _ = stats("train")
    np.testing.assert_allclose(np.ravel(norm.input_mean), val_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.ravel(norm.input_variance), val_var, rtol=1e-5, atol=1e-5)
    assert np.abs(np.ravel(norm.input_mean) - train_mean).max() > 1e-3
    report = (result.run_dir / "privacy_report.md").read_text()
    assert "validation patients" in report and "never the private training patients" in report


def test_train_prints_the_noise_to_signal_figure_before_training(scatter_run):
    result, said = scatter_run
    line = next(m for m in said if m.startswith("noise-to-signal"))
    sigma, n = result.privacy.noise_multiplier, result.privacy.n_units
    d = feature_spec(json.loads((result.run_dir / "run.json").read_text())["model"]).size + 1
    assert f"= {sigma * math.sqrt(d) / n:.2f}" in line
    assert said.index(line) < next(i for i, m in enumerate(said) if m.startswith("epoch 1/"))


def test_the_baseline_trains_at_its_own_learning_rate(prep, tmp_path):
    config = replace(FAST, epochs=2, learning_rate=0.5, baseline_learning_rate=0.07)
    said: list[str] = []
    train(
        prep,
        config=config,
        target_epsilon=math.inf,
        runs_dir=tmp_path,
        run_id="b",
        on_event=said.append,
    )
    plan = json.loads((tmp_path / "b" / "checkpoints" / "plan.json").read_text())
    assert plan["train"]["learning_rate"] == 0.07
    assert any("learning rate 0.07" in m for m in said)


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"augment": True}, "augment"),
        ({"ema": 1.0}, "ema"),
    ],
)
def test_settings_a_feature_model_cannot_honour_fail_before_anything_is_counted(
    prep, tmp_path, change, word
):
    from covidct.privacy.ledger import read_ledger

    before = len(read_ledger(prep).entries)
    with pytest.raises(ConfigError, match=word):
        train(prep, config=replace(FAST, **change), target_epsilon=3.0, runs_dir=tmp_path)
    assert len(read_ledger(prep).entries) == before


def test_grad_cam_of_a_feature_model_looks_at_the_transforms_maps(scatter_run, prep):
    from covidct.data.units import SliceStore
    from covidct.inference import _last_feature_layer, grad_cam, load_bundle

    result, _ = scatter_run
    bundle = load_bundle(result.run_dir)
    model = json.loads((result.run_dir / "run.json").read_text())["model"]
    assert _last_feature_layer(bundle.model).name == model
    units = load_units(prep, "test", PrivacyUnit.PATIENT)
    f, i = units.slices[0][0]
    cam = grad_cam(bundle, SliceStore(prep).get(f, i))
    assert cam.shape == (32, 32) and cam.min() >= 0.0 and cam.max() <= 1.0
