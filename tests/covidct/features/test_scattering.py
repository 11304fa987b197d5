"""Fixed scattering features: kymatio's TF frontend against its numpy frontend, the per-PREP
cache, and the saved model (transform + head) against the head on cached features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidct.data.units import SliceStore
from covidct.features.cache import FeatureStore, ensure_features, feature_stats
from covidct.features.scattering import ScatteringMaps, ScatteringSpec
from covidct.features.transform import compute_features
from covidct.models import DEFAULT_WINDOW, SCATTERING, assemble, build_head
from tests.covidct.features.conftest import all_files

SPEC = ScatteringSpec(j=2, angles=8, grid=2)


def scattering_features(u8: np.ndarray, *, spec: ScatteringSpec) -> np.ndarray:
    return compute_features(u8, spec, DEFAULT_WINDOW)


def _numpy_reference(x: np.ndarray, spec: ScatteringSpec) -> np.ndarray:
    """kymatio's numpy frontend, imported from its module (the package import fails on scipy
    1.17), then covidct's log and channels-last layout."""
    from kymatio.scattering2d.frontend.numpy_frontend import ScatteringNumPy2D

    s = ScatteringNumPy2D(J=spec.j, shape=x.shape[-2:], L=spec.angles)(x.astype(np.float64))
    return np.log(np.transpose(s, (0, 2, 3, 1)) + spec.log_floor)


def test_tensorflow_scattering_maps_match_kymatios_numpy_frontend() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((3, 32, 32)).astype(np.float32)
    layer = ScatteringMaps(32, j=2, angles=8, log_floor=SPEC.log_floor)
    got = layer(x[..., None]).numpy()
    want = _numpy_reference(x, SPEC)
    assert got.shape == (3, 8, 8, 81) == want.shape
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_features_are_the_quadrant_means_and_slice_max_of_the_maps() -> None:
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, size=(2, 32, 32), dtype=np.uint8)
    feats = scattering_features(u8, spec=SPEC)
    maps = _numpy_reference(u8.astype(np.float32) / 255.0, SPEC)  # (2, 8, 8, 81)
    quads = maps.reshape(2, 2, 4, 2, 4, 81).mean(axis=(2, 4)).reshape(2, 4 * 81)
    want = np.concatenate([quads, maps.max(axis=(1, 2))], axis=1)
    assert feats.shape == (2, SPEC.size) == (2, 405)
    np.testing.assert_allclose(feats, want, atol=2e-4)


def test_a_slices_features_do_not_depend_on_the_rest_of_its_batch() -> None:
    rng = np.random.default_rng(2)
    u8 = rng.integers(0, 256, size=(5, 32, 32), dtype=np.uint8)
    together = scattering_features(u8, spec=SPEC)
    alone = scattering_features(u8[3:4], spec=SPEC)
    np.testing.assert_allclose(together[3:4], alone, atol=1e-5)


def test_sizes_the_transform_cannot_take_are_refused_with_the_size_to_prepare() -> None:
    with pytest.raises(ValueError, match="--image-size 32"):
        SPEC.check(28)
    SPEC.check(64)


def test_the_saved_model_on_slices_equals_the_head_on_cached_features(
    own_prep: Path, tmp_path: Path
) -> None:
    """What training optimises (the head on the cache) is what inference runs (the transform
    and the head on slices)."""
    from covidct.tfsetup import keras

    files = all_files(own_prep)
    ensure_features(own_prep, SPEC, [files[0], files[2]])
    store, slices = FeatureStore(own_prep, SPEC), SliceStore(own_prep)
    refs = [(files[0], 0), (files[0], 1), (files[2], 0)]
    mean, var = feature_stats(store, refs)
    head = build_head("scattering", mean=mean, variance=var)
    rng = np.random.default_rng(3)
    head.get_layer("logit").set_weights([rng.normal(size=(405, 1)) * 0.1, np.array([0.2])])
    on_features = head(store.inputs(refs)).numpy()

    full = assemble(head, image_size=32, spec=SCATTERING, window=DEFAULT_WINDOW)
    full.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(
        tmp_path / "m.keras", compile=False
    )  # covidct.features imported
    on_slices = loaded(slices.inputs(refs)).numpy()
    np.testing.assert_allclose(on_slices, on_features, atol=1e-3)
    assert loaded.count_params() == 406
