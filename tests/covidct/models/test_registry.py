"""The model registry: every model is a DP-trainable binary classifier that saves portably."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidct.errors import ConfigError
from covidct.models import (
    DEFAULT_MODEL,
    MODEL_REGISTRY,
    UnknownModelError,
    available_models,
    build_model,
    feature_spec,
    validate_model,
)
from covidct.tfsetup import keras

SIZE = 64


def _slices(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, SIZE, SIZE, 1), dtype=np.float32)


def _layer_classes(model: keras.Model) -> set[str]:
    return {type(m).__name__ for m in [model, *model.submodules]}


def test_registry_lists_the_default_and_a_groupnorm_resnet18() -> None:
    assert DEFAULT_MODEL in available_models()
    assert "gn_resnet18" in available_models()
    assert available_models() == sorted(MODEL_REGISTRY)


@pytest.mark.parametrize("name", available_models())
def test_every_registered_model_outputs_one_logit_per_slice_without_batchnorm(
    name: str,
) -> None:
    model = build_model(name, input_size=SIZE, seed=0)
    out = np.asarray(model(_slices(3), training=False))
    assert out.shape == (3, 1)
    assert np.isfinite(out).all()
    # Logits, not probabilities: the last layer has no sigmoid squashing them into [0, 1].
    assert model.layers[-1].get_config().get("activation", "linear") == "linear"
    classes = _layer_classes(model)
    assert not any("BatchNormalization" in c for c in classes)
    if feature_spec(name) is None:  # a CNN normalises its own features per example
        assert "GroupNormalization" in classes
    else:  # a fixed transform, then a head standardised by constants
        assert classes & {"ScatteringMaps", "AttenuationMaps"} and "Normalization" in classes
        spec = feature_spec(name)
        assert spec is not None
        assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == spec.size + 1
    validate_model(model)


def test_same_seed_gives_the_same_weights_and_another_seed_different_ones() -> None:
    a = build_model("gn_cnn_small", input_size=SIZE, seed=3).get_weights()
    b = build_model("gn_cnn_small", input_size=SIZE, seed=3).get_weights()
    c = build_model("gn_cnn_small", input_size=SIZE, seed=4).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("name", ["scattering", "attenuation"])
def test_a_feature_head_starts_at_zero_whatever_the_seed(name: str) -> None:
    # logistic regression needs no symmetry breaking: every start predicts 1/2
    for seed in (3, 4):
        weights = build_model(name, input_size=SIZE, seed=seed).get_weights()
        assert all(not w.any() for w in weights)


def test_default_model_accepts_other_slice_sizes() -> None:
    model = build_model(DEFAULT_MODEL, input_size=96, seed=0)
    assert model.input_shape == (None, 96, 96, 1)
    assert model.output_shape == (None, 1)


def test_unknown_model_name_error_lists_the_available_models() -> None:
    with pytest.raises(UnknownModelError) as err:
        build_model("resnet_with_batchnorm", input_size=SIZE, seed=0)
    assert isinstance(err.value, ConfigError)
    for name in available_models():
        assert name in str(err.value)


def test_saved_model_loads_without_covidct_and_predicts_the_same(tmp_path: Path) -> None:
    model = build_model("gn_cnn_small", input_size=SIZE, seed=1)
    x = _slices(4, seed=2)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    # No custom_objects: every layer is a tf-keras built-in.
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    validate_model(loaded)


@pytest.mark.parametrize("name", ["scattering", "attenuation"])
def test_a_saved_feature_model_needs_exactly_one_import_to_load(name: str, tmp_path: Path) -> None:
    """In a fresh process: plain load_model fails (tf-keras says only "'str' object is not
    callable": the README names the import); after
    ``import covidct.features`` it loads and predicts what the original predicts."""
    import subprocess
    import sys

    model = build_model(name, input_size=32, seed=0)
    rng = np.random.default_rng(0)
    n = model.get_layer("logit").get_weights()[0].shape[0]
    model.get_layer("logit").set_weights([rng.normal(size=(n, 1)) * 0.05, np.array([0.1])])
    x = _slices(2, seed=3)[:, :32, :32, :]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", model.predict(x, verbose=0))
    model.save(tmp_path / "m.keras")
    script = f"""
import numpy as np
from covidct.tfsetup import keras
try:
    keras.models.load_model({str(tmp_path / "m.keras")!r}, compile=False)
    print("LOADED_WITHOUT_IMPORT")
except Exception as exc:
    print("REFUSED", type(exc).__name__)
import covidct.features
m = keras.models.load_model({str(tmp_path / "m.keras")!r}, compile=False)
got = m.predict(np.load({str(tmp_path / "x.npy")!r}), verbose=0)
print("MAXDIFF", float(np.abs(got - np.load({str(tmp_path / "want.npy")!r})).max()))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert "REFUSED" in out and "LOADED_WITHOUT_IMPORT" not in out
    assert float(out.split("MAXDIFF")[1]) < 1e-4
