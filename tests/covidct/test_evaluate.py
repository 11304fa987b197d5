"""Metrics and patient scores against hand computation; thresholds are chosen on validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidct.evaluate import (
    PatientScore,
    Predictions,
    aggregate,
    binary_metrics,
    split_metrics,
    youden_threshold,
)


def test_mean_logit_patient_score_is_the_sigmoid_of_the_mean_slice_logit():
    probs = 1 / (1 + np.exp(-np.array([1.0, 3.0, -1.0])))
    assert aggregate(probs, PatientScore.MEAN_LOGIT) == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_patient_scores_aggregate_each_patients_own_slices():
    probs = np.array([0.1, 0.9, 0.5, 0.2, 0.3, 0.4, 0.8])
    assert aggregate(probs, PatientScore.MEAN) == pytest.approx(probs.mean())
    assert aggregate(probs, PatientScore.MAX) == pytest.approx(0.9)
    assert aggregate(probs, PatientScore.TOP3_MEAN) == pytest.approx((0.9 + 0.8 + 0.5) / 3)
    pred = Predictions(
        patients=["b", "a", "b", "a"],
        labels=np.array([1, 0, 1, 0]),
        probs=np.array([0.8, 0.1, 0.6, 0.3]),
    )
    ids, labels, scores = pred.by_patient(PatientScore.MEAN)
    assert ids == ["a", "b"] and list(labels) == [0, 1]
    np.testing.assert_allclose(scores, [0.2, 0.7])
    with pytest.raises(ValueError, match="no slice"):
        aggregate(np.array([]), PatientScore.MEAN)


def test_binary_metrics_match_a_hand_count():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.05])
    m = binary_metrics(labels, scores, threshold=0.5)
    # at 0.5: tp = 2 (0.9, 0.6), fn = 1 (0.2), fp = 1 (0.7), tn = 3
    assert m["confusion_matrix"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 2}
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(5 / 7)
    # AUC: of the 12 positive-negative pairs, the positive scores higher in 4 + 3 + 2 = 9
    assert m["auc"] == pytest.approx(9 / 12)
    assert binary_metrics(np.zeros(3), np.array([0.1, 0.2, 0.3]), 0.5)["auc"] is None


def test_thresholds_are_chosen_on_validation_never_on_test():
    validation = Predictions(
        patients=["v1", "v2", "v3", "v4"],
        labels=np.array([0, 0, 1, 1]),
        probs=np.array([0.1, 0.2, 0.3, 0.4]),
    )
    # on test, the best threshold would be 0.8; validation puts it at 0.3
    test = Predictions(
        patients=["t1", "t2", "t3"], labels=np.array([0, 1, 1]), probs=np.array([0.5, 0.8, 0.9])
    )
    m = split_metrics(test, validation, PatientScore.MEAN)
    assert m["patient"]["threshold"] == pytest.approx(0.3)
    assert m["threshold_chosen_on"] == "validation"
    assert m["patient"]["confusion_matrix"]["fp"] == 1  # 0.5 >= 0.3: the test cost of that choice
    assert youden_threshold(np.array([1, 1]), np.array([0.2, 0.9])) == 0.5  # one class: no choice
