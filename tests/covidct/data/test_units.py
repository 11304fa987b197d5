"""Privacy units over a prepared folder: grouped by patient, read lazily, sampled from the
run's secret, and cut into fixed-shape chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from covidct.data.units import (
    DataError,
    PoissonSampler,
    PrivacyUnit,
    ShuffledSampler,
    SliceStore,
    image_size,
    load_units,
    slice_kinds,
    unit_chunks,
)
from covidct.privacy.secret import RunSecret
from data_prep.manifest import read_manifest
from data_prep.prepared import PrepFolder


def test_a_patient_unit_holds_all_its_slices_and_a_slice_unit_one(prep: Path):
    rows = [r for r in read_manifest(PrepFolder(prep).manifest_file) if r.split == "train"]
    patients = load_units(prep, "train", PrivacyUnit.PATIENT)
    assert patients.ids == sorted({r.patient_id for r in rows}) == patients.patients
    for pid, refs, label in zip(patients.ids, patients.slices, patients.labels, strict=True):
        mine = [r for r in rows if r.patient_id == pid]
        assert sorted(refs) == sorted((r.file, r.index) for r in mine)
        assert {r.label for r in mine} == {int(label)}
    slices = load_units(prep, "train", PrivacyUnit.SLICE)
    assert len(slices) == len(rows) and all(len(s) == 1 for s in slices.slices)
    assert set(slices.patients) == set(patients.ids)
    assert image_size(prep) == 32 and slice_kinds(prep) == {
        "hu": len(read_manifest(PrepFolder(prep).manifest_file))
    }


def test_a_folder_that_is_not_prepared_is_a_data_error_naming_the_fix(tmp_path: Path):
    with pytest.raises(DataError, match="run covidct prepare first"):
        load_units(tmp_path, "train", PrivacyUnit.PATIENT)
    with pytest.raises(DataError, match="run covidct prepare first"):
        image_size(tmp_path)
    with pytest.raises(DataError, match="re-run covidct prepare"):
        SliceStore(tmp_path).get("slices/V-missing.npy", 0)


def test_chunks_have_a_fixed_shape_pad_with_absent_units_and_take_at_most_k_slices(prep: Path):
    units = load_units(prep, "train", PrivacyUnit.PATIENT)
    store = SliceStore(prep)
    chosen = np.arange(5)
    chunks = list(unit_chunks(units, chosen, store, k=4, chunk=3, rng=np.random.default_rng(0)))
    assert len(chunks) == 2
    for x, mask, y, _ in chunks:
        assert x.shape == (3, 4, 32, 32, 1) and mask.shape == (3, 4) and y.shape == (3,)
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert list(chunks[1][3]) == [1.0, 1.0, 0.0]  # the last chunk is padded
    assert chunks[1][1][2].sum() == 0 and chunks[1][0][2].max() == 0
    n_slices = [min(4, len(units.slices[u])) for u in chosen]
    got = [int(m.sum()) for _, mask, _, _ in chunks for m in mask][:5]
    assert got == n_slices
    own = store.inputs(units.slices[0])[..., 0]  # unit 0's slices: each drawn one is one of them
    for s in range(n_slices[0]):
        assert any(np.allclose(chunks[0][0][0, s, :, :, 0], o) for o in own)
    assert chunks[0][2][0] == units.labels[0]


def test_poisson_batch_sizes_have_binomial_mean_and_variance():
    n, q = 500, 0.05
    sampler = PoissonSampler(n, sampling_rate=q, secret=RunSecret.draw())
    sizes = np.array([len(sampler.sample(t)) for t in range(4000)])
    assert sizes.mean() == pytest.approx(n * q, rel=0.02)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.1)
    # each unit independently: unit i's inclusions over the steps are Binomial(4000, q)
    hits = np.bincount(np.concatenate([sampler.sample(t) for t in range(4000)]), minlength=n)
    assert stats.chisquare(hits).pvalue > 1e-4
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        PoissonSampler(n, sampling_rate=0.0, secret=RunSecret.draw())


def test_shuffled_batches_cover_every_unit_once_per_epoch():
    sampler = ShuffledSampler(10, batch_size=3, secret=RunSecret.draw())
    epoch = np.concatenate([sampler.sample(t) for t in range(sampler.steps_per_epoch)])
    assert sampler.steps_per_epoch == 3 and len(set(epoch.tolist())) == 9
