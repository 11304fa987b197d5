"""Fixed scattering features: kymatio's TF frontend against its numpy frontend, the per-PREP
cache, and the saved model (transform + head) against the head on cached features."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from covidct.data.units import DataError, PrivacyUnit, SliceStore, load_units
from covidct.features import from_record
from covidct.features.cache import FeatureStore, cache_folder, ensure_features, feature_stats
from covidct.features.scattering import ScatteringMaps, ScatteringSpec
from covidct.features.transform import cache_key, compute_features
from covidct.models import DEFAULT_WINDOW, SCATTERING, assemble, build_head

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


@pytest.fixture()
def own_prep(prep: Path, tmp_path: Path) -> Path:
    """A copy of the session's PREP without any feature cache."""
    data = tmp_path / "prep"
    shutil.copytree(prep, data, ignore=shutil.ignore_patterns("features"))
    return data


@pytest.fixture(scope="module")
def _cached(prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("cached") / "prep"
    shutil.copytree(prep, data, ignore=shutil.ignore_patterns("features"))
    ensure_features(data, SPEC, _all_files(data))
    return data


@pytest.fixture()
def cached_prep(_cached: Path, tmp_path: Path) -> Path:
    """A copy of a PREP whose cache is complete (computed once per module)."""
    data = tmp_path / "prep"
    shutil.copytree(_cached, data)
    return data


def _all_files(prep: Path) -> list[str]:
    files = set()
    for split in ("train", "validation", "test"):
        for refs in load_units(prep, split, PrivacyUnit.PATIENT).slices:
            files.update(f for f, _ in refs)
    return sorted(files)


def test_the_cache_is_computed_once_and_holds_each_slices_features(own_prep: Path) -> None:
    files = _all_files(own_prep)
    first = ensure_features(own_prep, SPEC, files)
    assert first.computed_volumes == len(files) and first.reused_volumes == 0
    second = ensure_features(own_prep, SPEC, files)
    assert second.computed_volumes == 0 and second.reused_volumes == len(files)

    store, slices = FeatureStore(own_prep, SPEC), SliceStore(own_prep)
    f = files[0]
    want = scattering_features(np.asarray(slices.array(f)), spec=SPEC)
    got = np.stack([store.get(f, i) for i in range(len(want))])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_an_interrupted_cache_recomputes_only_what_is_missing(cached_prep: Path) -> None:
    files = _all_files(cached_prep)
    folder = cache_folder(cached_prep, SPEC)
    (folder / Path(files[1]).name).unlink()
    (folder / "leftover.123.tmp").write_bytes(b"half a shard")
    again = ensure_features(cached_prep, SPEC, files)
    assert again.computed_volumes == 1
    assert FeatureStore(cached_prep, SPEC).get(files[1], 0).shape == (SPEC.size,)


def test_a_shard_that_no_longer_matches_its_scan_is_computed_again(cached_prep: Path) -> None:
    files = _all_files(cached_prep)
    shard = cache_folder(cached_prep, SPEC) / Path(files[0]).name
    np.save(shard, np.zeros((1, SPEC.size), np.float32))  # a scan with other slices before
    assert ensure_features(cached_prep, SPEC, files).computed_volumes == 1
    n = len(SliceStore(cached_prep).array(files[0]))
    assert FeatureStore(cached_prep, SPEC).array(files[0]).shape == (n, SPEC.size)


def test_the_cache_key_follows_the_transform_and_the_slice_settings(cached_prep: Path) -> None:
    settings = json.loads((cached_prep / "dataset.json").read_text())["slices"]
    key = cache_key(SPEC, settings)
    assert key == cache_key(SPEC, dict(settings))
    assert key != cache_key(ScatteringSpec(j=2, angles=6, grid=2), settings)
    flipped = {**settings, "mask_outside_lungs": not settings["mask_outside_lungs"]}
    assert key != cache_key(SPEC, flipped)
    assert from_record(SPEC.record(settings)) == SPEC


def test_the_cache_holds_no_identifier(cached_prep: Path, prep: Path) -> None:
    folder = cache_folder(cached_prep, SPEC)
    names = {p.name for p in folder.iterdir()}
    slice_names = {Path(f).name for f in _all_files(cached_prep)}
    assert names == slice_names | {"spec.json"}  # the volume pseudonyms prepare already uses
    spec = json.loads((folder / "spec.json").read_text())
    assert set(spec) == {
        "transform",
        "kymatio",
        "j",
        "angles",
        "grid",
        "log_floor",
        "slices",
        "dtype",
        "layout",
    }
    source_ids = (prep.parent / "cohort" / "labels.csv").read_text().split()[1:]
    text = (folder / "spec.json").read_text()
    assert not any(row.split(",")[0] in text for row in source_ids)


def test_a_corrupt_shard_is_a_clear_error_naming_the_fix(cached_prep: Path) -> None:
    files = _all_files(cached_prep)
    (cache_folder(cached_prep, SPEC) / Path(files[0]).name).write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"delete .* and train again"):
        FeatureStore(cached_prep, SPEC).get(files[0], 0)


def test_the_saved_model_on_slices_equals_the_head_on_cached_features(
    cached_prep: Path, tmp_path: Path
) -> None:
    """What training optimises (the head on the cache) is what inference runs (the transform
    and the head on slices)."""
    from covidct.tfsetup import keras

    files = _all_files(cached_prep)
    store, slices = FeatureStore(cached_prep, SPEC), SliceStore(cached_prep)
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
