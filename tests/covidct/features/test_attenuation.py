"""Fixed lung-attenuation features: against an independent numpy/scipy computation, what they
respond to (a ground-glass patch, not a vessel of the same attenuation), the window, and the saved
model (transform + head) against the head on cached features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from covidct.data.units import PrivacyUnit, SliceStore, load_units
from covidct.features import from_record
from covidct.features.attenuation import AttenuationSpec
from covidct.features.cache import FeatureStore, ensure_features, feature_stats
from covidct.features.transform import cache_key, compute_features
from covidct.models import ATTENUATION, DEFAULT_WINDOW, assemble, build_head

SPEC = AttenuationSpec()
LEVEL, WIDTH = DEFAULT_WINDOW


def _u8(hu: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW) -> np.ndarray:
    level, width = window
    return np.clip(np.round((hu - level + width / 2) / width * 255), 0, 255).astype(np.uint8)


def _reference(u8: np.ndarray, spec: AttenuationSpec, window: tuple[float, float]) -> np.ndarray:
    """The transform written again with numpy and scipy's box filter."""
    level, width = window
    hu = level - width / 2 + u8.astype(np.float64) / 255.0 * width
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    size = u8.shape[-1]
    out = []
    for s in hu:
        row = []
        for lo, hi in spec.bands_hu:
            m = sig((s - lo) / spec.softness_hu) * sig((hi - s) / spec.softness_hu)
            row.append(m.mean())
            for k in spec.scales:
                side = max(1, round(k * size / spec.reference_size))
                u = uniform_filter(m, side, mode="constant")
                row.append(u.max())
                row += [sig((u - level_) / 0.05).mean() for level_ in spec.levels]
        out.append(row)
    return np.log(np.array(out) + spec.log_floor)


def _lung(rng: np.random.Generator, n: int = 2, size: int = 48) -> np.ndarray:
    """Aerated lung (about -850 HU, noisy) inside air: the border is air, as in masked slices."""
    hu = np.full((n, size, size), -1000.0)
    hu[:, 10:-10, 10:-10] = -850 + rng.normal(0, 40, (n, size - 20, size - 20))
    return hu


def test_features_match_an_independent_numpy_computation() -> None:
    rng = np.random.default_rng(0)
    hu = _lung(rng)
    hu[0, 20:28, 18:30] = -520 + rng.normal(0, 30, (8, 12))  # a patch
    hu[1, 15:35, 24] = -420  # a vessel
    u8 = _u8(hu)
    got = compute_features(u8, SPEC, DEFAULT_WINDOW)
    assert got.shape == (2, SPEC.size) == (2, 30)
    np.testing.assert_allclose(got, _reference(u8, SPEC, DEFAULT_WINDOW), atol=2e-4)


def test_a_ground_glass_patch_counts_and_a_vessel_of_the_same_area_does_not() -> None:
    """The blob features see a 2-3 cm patch; a thin line of the same attenuation and area (a
    vessel, a partial-volume edge) moves the band's area fraction as much but not the blobs."""
    rng = np.random.default_rng(1)
    hu = _lung(rng, n=3)
    hu[1, 20:28, 20:28] = -520  # 64 pixels: a patch
    hu[2, 12:36, 20] = -520  # 64 pixels: thin lines
    hu[2, 12:36, 28] = -520
    hu[2, 12:28, 34] = -520
    f = compute_features(_u8(hu), SPEC, DEFAULT_WINDOW)
    per = 1 + len(SPEC.scales) * (1 + len(SPEC.levels))
    band = 0  # -750..-500 HU
    area = f[:, band * per]
    np.testing.assert_allclose(area[1], area[2], atol=0.05)  # same area in the band
    assert area[1] > area[0] + 1.0  # log scale: far more than aerated lung alone
    # box of 5 px at 96 -> 2-3 px at 48: the fraction above 0.8 at each scale
    above = [f[:, band * per + 1 + s * (1 + len(SPEC.levels)) + 2] for s in range(3)]
    for frac in above:
        assert frac[1] > frac[2] + 1.0 and frac[2] < frac[0] + 0.5


def test_the_features_are_in_hu_whatever_the_window_the_slices_were_stored_in() -> None:
    rng = np.random.default_rng(2)
    hu = _lung(rng)
    hu[0, 18:30, 18:30] = -450
    other = (-500.0, 1400.0)
    a = compute_features(_u8(hu), SPEC, DEFAULT_WINDOW)
    b = compute_features(_u8(hu, other), SPEC, other)
    np.testing.assert_allclose(a, b, atol=0.25)  # up to the 8-bit storage step (~6 HU)


def test_invalid_parameters_and_tiny_slices_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid attenuation"):
        AttenuationSpec(bands_hu=((-300.0, -500.0),)).check(64)
    with pytest.raises(ValueError, match="16 px"):
        SPEC.check(8)


def test_the_cache_key_and_the_run_record_follow_the_parameters(prep: Path) -> None:
    settings = json.loads((prep / "dataset.json").read_text())["slices"]
    record = SPEC.record(settings)
    assert json.loads(json.dumps(record)) == record  # what run.json gives back compares equal
    assert from_record(record) == SPEC
    assert cache_key(SPEC, settings) != cache_key(AttenuationSpec(scales=(3, 5)), settings)


def test_the_saved_model_on_slices_equals_the_head_on_cached_features(
    prep: Path, tmp_path: Path
) -> None:
    """What training optimises (the head on the cache) is what inference runs; the saved model
    loads with plain Keras once covidct.features is imported."""
    import shutil

    from covidct.features.transform import window_of
    from covidct.tfsetup import keras

    data = tmp_path / "prep"
    shutil.copytree(prep, data, ignore=shutil.ignore_patterns("features"))
    train = load_units(data, "train", PrivacyUnit.PATIENT)
    files = sorted({f for refs in train.slices for f, _ in refs})
    ensure_features(data, ATTENUATION, files)
    store, slices = FeatureStore(data, ATTENUATION), SliceStore(data)
    refs = [(files[0], 0), (files[0], 1), (files[2], 0)]
    mean, var = feature_stats(store, refs)
    head = build_head("attenuation", mean=mean, variance=var)
    rng = np.random.default_rng(3)
    head.get_layer("logit").set_weights([rng.normal(size=(30, 1)), np.array([0.2])])
    on_features = head(store.inputs(refs)).numpy()

    settings = json.loads((data / "dataset.json").read_text())["slices"]
    full = assemble(head, image_size=32, spec=ATTENUATION, window=window_of(settings))
    full.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(loaded(slices.inputs(refs)).numpy(), on_features, atol=1e-3)
    assert loaded.count_params() == 31


def test_the_per_region_contributions_sit_on_the_patch_not_on_vessels() -> None:
    """The Predict page's heat map for an attenuation model: each pixel's contribution through
    the linear head. With a head that counts ground-glass blobs as evidence, it lights the
    patch, not thin lines of the same attenuation (Grad-CAM's averaged gradients would not)."""
    from covidct.features.attenuation import AttenuationPool, contribution_function
    from covidct.tfsetup import tf

    rng = np.random.default_rng(4)
    hu = _lung(rng, n=1)
    hu[0, 20:28, 20:28] = -520  # a patch
    hu[0, 12:36, 34] = -520  # a vessel-like line
    x = _u8(hu).astype(np.float32)[..., None] / 255.0
    ones = np.ones(SPEC.size, np.float32)
    head = build_head("attenuation", mean=0 * ones, variance=ones)
    per = 1 + len(SPEC.scales) * (1 + len(SPEC.levels))
    weights = np.zeros((SPEC.size, 1), np.float32)
    for s in range(len(SPEC.scales)):  # the first band's blob fractions count as evidence
        weights[1 + s * (1 + len(SPEC.levels)) + 1 : 1 + (s + 1) * (1 + len(SPEC.levels)), 0] = 1
    assert per == 10
    head.get_layer("logit").set_weights([weights, np.zeros(1, np.float32)])
    model = assemble(head, image_size=48, spec=ATTENUATION, window=DEFAULT_WINDOW)
    heat = np.asarray(contribution_function(model, 48)(tf.constant(x)))
    assert heat.shape == (48, 48) and heat.min() >= 0
    patch, line = heat[21:27, 21:27].mean(), heat[14:34, 34].mean()
    assert patch > 10 * line and patch > 10 * heat[:10, :].mean()

    # the maps it weighs are the ones the features average (one layout, in AttenuationPool)
    pool = model.get_layer("features")
    assert isinstance(pool, AttenuationPool)
    maps = model.get_layer("attenuation")(tf.constant(x))
    means = np.asarray(tf.reduce_mean(pool.pixel_maps(maps), axis=[1, 2]))[0]
    pooled = np.exp(np.asarray(pool(maps))[0]) - SPEC.log_floor
    is_mean = means > 0
    np.testing.assert_allclose(means[is_mean], pooled[is_mean], rtol=1e-4, atol=1e-6)
