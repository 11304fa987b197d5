"""The phantom generator: lesions where the labels say, the same anatomy at any matrix, and no
class signal in a plain HU threshold."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from data_prep.synthetic.cohort import (
    patient_rng,
)
from data_prep.synthetic.phantom import make_phantom


def _auc(pos: list[float], neg: list[float]) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def test_phantom_depends_only_on_its_generator_state():
    kw: dict[str, Any] = {"n_slices": 4, "matrix": 24, "positive": True, "burden": "severe"}
    a, b = make_phantom(patient_rng(1, 7), **kw), make_phantom(patient_rng(1, 7), **kw)
    c = make_phantom(patient_rng(1, 8), **kw)
    assert np.array_equal(a.hu, b.hu) and a.origin == b.origin
    assert not np.array_equal(a.hu, c.hu)


def test_positives_have_ground_glass_inside_the_lung_and_negatives_none():
    for i, burden in enumerate(["mild", "severe", "none"]):
        ph = make_phantom(
            patient_rng(21, i), n_slices=16, matrix=64, positive=burden != "none", burden=burden
        )
        assert ph.hu.dtype == np.int16 and ph.hu.shape == (16, 64, 64)
        assert ph.lung_mask is not None and ph.lesion_mask is not None
        assert ph.lung_mask.sum() > 0.03 * ph.hu.size
        np.testing.assert_array_equal(ph.lesion_slices, ph.lesion_mask.any(axis=(1, 2)))
        if burden == "none":
            assert not ph.lesion_slices.any()
            continue
        assert ph.lesion_slices.any() and not ph.lesion_slices.all()
        assert not (ph.lesion_mask & ~ph.lung_mask).any()
        assert -750 < ph.hu[ph.lesion_mask].mean() < -150
    with pytest.raises(ValueError, match="does not match"):
        make_phantom(patient_rng(0, 0), n_slices=4, matrix=16, positive=True, burden="none")


def test_phantom_works_at_large_matrices_with_the_same_anatomy():
    small = make_phantom(patient_rng(3, 0), n_slices=4, matrix=64, positive=True, burden="mild")
    big = make_phantom(patient_rng(3, 0), n_slices=4, matrix=256, positive=True, burden="mild")
    assert big.hu.shape == (4, 256, 256)
    # Same patient, finer grid: the 4x4 block means of the large volume track the small one.
    blocks = big.hu.reshape(4, 64, 4, 64, 4).mean(axis=(2, 4))
    assert np.corrcoef(blocks.ravel(), small.hu.ravel())[0, 1] > 0.95


def test_dense_pixel_count_does_not_separate_classes_but_mild_lesions_are_visible():
    """A HU-band counter must fail (AUC < 0.8) while the lesions stay visible to a model."""
    scores: dict[str, list[float]] = {"none": [], "mild": [], "severe": []}
    contrast = []
    plan = ["none"] * 30 + ["mild"] * 15 + ["severe"] * 15
    for i, burden in enumerate(plan):
        ph = make_phantom(
            patient_rng(100, i), n_slices=16, matrix=64, positive=burden != "none", burden=burden
        )
        scores[burden].append(float(((ph.hu >= -700) & (ph.hu <= -300)).mean()))
        if burden == "mild":
            assert ph.lesion_mask is not None and ph.lung_mask is not None
            # Surrounding parenchyma: lung away from its edges and from the lesion, same slices.
            inner = ndimage.binary_erosion(ph.lung_mask, structure=np.ones((1, 3, 3)))
            near = ndimage.binary_dilation(ph.lesion_mask, iterations=2)
            around = inner & ~near & ph.lesion_slices[:, None, None]
            contrast.append(float(ph.hu[ph.lesion_mask].mean() - ph.hu[around].mean()))
    pos = scores["mild"] + scores["severe"]
    assert _auc(pos, scores["none"]) < 0.8
    assert _auc(scores["mild"], scores["none"]) < 0.75
    # Negatives carry as many dense pixels as mild positives, on average (within 15%).
    assert abs(np.mean(scores["mild"]) / np.mean(scores["none"]) - 1) < 0.15
    assert np.median(contrast) >= 150 and min(contrast) >= 80
