"""The per-PREP feature cache: computed once, resumable, checked against its scans, holding
no identifier."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from covidct.data.units import DataError, SliceStore
from covidct.features.cache import FeatureStore, cache_folder, ensure_features
from covidct.features.scattering import ScatteringSpec
from covidct.features.transform import compute_features
from covidct.models import DEFAULT_WINDOW
from tests.covidct.features.conftest import all_files

SPEC = ScatteringSpec(j=2, angles=8, grid=2)


def scattering_features(u8: np.ndarray, *, spec: ScatteringSpec) -> np.ndarray:
    return compute_features(u8, spec, DEFAULT_WINDOW)


@pytest.fixture(scope="module")
def _cached(prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("cached") / "prep"
    shutil.copytree(prep, data, ignore=shutil.ignore_patterns("features"))
    ensure_features(data, SPEC, all_files(data))
    return data


@pytest.fixture()
def cached_prep(_cached: Path, tmp_path: Path) -> Path:
    """A copy of a PREP whose cache is complete (computed once per module)."""
    data = tmp_path / "prep"
    shutil.copytree(_cached, data)
    return data


def test_the_cache_is_computed_once_and_holds_each_slices_features(own_prep: Path) -> None:
    files = all_files(own_prep)
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
    files = all_files(cached_prep)
    folder = cache_folder(cached_prep, SPEC)
    (folder / Path(files[1]).name).unlink()
    (folder / "leftover.123.tmp").write_bytes(b"half a shard")
    again = ensure_features(cached_prep, SPEC, files)
    assert again.computed_volumes == 1
    assert FeatureStore(cached_prep, SPEC).get(files[1], 0).shape == (SPEC.size,)


def test_a_shard_that_no_longer_matches_its_scan_is_computed_again(cached_prep: Path) -> None:
    files = all_files(cached_prep)
    shard = cache_folder(cached_prep, SPEC) / Path(files[0]).name
    np.save(shard, np.zeros((1, SPEC.size), np.float32))  # a scan with other slices before
    assert ensure_features(cached_prep, SPEC, files).computed_volumes == 1
    n = len(SliceStore(cached_prep).array(files[0]))
    assert FeatureStore(cached_prep, SPEC).array(files[0]).shape == (n, SPEC.size)


def test_the_cache_holds_no_identifier(cached_prep: Path, prep: Path) -> None:
    folder = cache_folder(cached_prep, SPEC)
    names = {p.name for p in folder.iterdir()}
    slice_names = {Path(f).name for f in all_files(cached_prep)}
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
    files = all_files(cached_prep)
    (cache_folder(cached_prep, SPEC) / Path(files[0]).name).write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"delete .* and train again"):
        FeatureStore(cached_prep, SPEC).get(files[0], 0)
