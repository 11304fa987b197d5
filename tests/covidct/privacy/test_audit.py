"""The membership-inference audit against mechanisms whose privacy loss is known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidct.evaluate import Predictions
from covidct.privacy.audit import (
    AUDIT_FORMAT,
    attack_epsilon,
    audit_predictions,
    trained_attack_epsilon,
)


def _randomized_response(eps: float, n: int, rng: np.random.Generator):
    """Members answer 1 with probability e^eps / (1 + e^eps), others with 1 / (1 + e^eps):
    an eps-DP mechanism whose best test proves exactly eps."""
    p = math.exp(eps) / (1 + math.exp(eps))
    return (rng.random(n) < p).astype(float), (rng.random(n) < 1 - p).astype(float)


def test_lower_bound_is_valid_and_tight_on_randomized_response():
    rng = np.random.default_rng(0)
    for eps in (0.5, 1.0, 2.0):
        members, others = _randomized_response(eps, 20_000, rng)
        bound = attack_epsilon(members, others, delta=0.0)
        assert bound <= eps  # never claims more than the truth
        assert bound > 0.8 * eps  # and finds most of it with 10,000 per half


def test_lower_bound_is_zero_without_leakage_at_the_stated_confidence():
    rng = np.random.default_rng(1)
    positives = sum(
        attack_epsilon(rng.normal(size=200), rng.normal(size=200), delta=1e-5, seed=s) > 0
        for s in range(40)
    )
    assert positives <= 4  # 95% confidence: about 2 false claims in 40 expected at most


def test_trained_attacker_bound_is_valid_and_tight_on_randomized_response():
    rng = np.random.default_rng(6)
    members, others = _randomized_response(1.0, 20_000, rng)
    noise = rng.normal(size=(40_000, 2))  # features that carry nothing
    m = np.column_stack([members, noise[:20_000]])
    o = np.column_stack([others, noise[20_000:]])
    bound = trained_attack_epsilon(m, o, delta=0.0)
    assert 0.8 < bound <= 1.0


def _predictions(n: int, scale: float, rng: np.random.Generator, tag: str) -> Predictions:
    """n patients of 4 slices; slice loss ~ Exponential(scale), correct side of 0.5."""
    patients, labels, probs = [], [], []
    for i in range(n):
        y = float(i % 2)
        for _ in range(4):
            confident = math.exp(-rng.exponential(scale))  # probability of the true class
            patients.append(f"{tag}{i}")
            labels.append(y)
            probs.append(confident if y else 1 - confident)
    return Predictions(patients, np.array(labels, np.float32), np.array(probs, np.float32))


def test_attacks_separate_memorised_patients_and_not_identical_ones():
    rng = np.random.default_rng(2)
    leaky = audit_predictions(
        _predictions(200, 0.05, rng, "m"),
        _predictions(100, 1.0, rng, "o"),
        theoretical_epsilon=math.inf,
        delta=1e-4,
    )
    assert leaky["format"] == AUDIT_FORMAT
    assert {a["attack"] for a in leaky["attacks"]} == {"loss_threshold", "logistic_regression"}
    assert leaky["attack_auc"] > 0.9
    assert leaky["epsilon_estimate"] > 1.0
    assert "no privacy guarantee" in leaky["reading"]
    assert "not covered by the guarantee" in leaky["caveat"]

    same = audit_predictions(
        _predictions(200, 0.5, rng, "m"),
        _predictions(100, 0.5, rng, "o"),
        theoretical_epsilon=3.0,
        delta=1e-4,
    )
    for a in same["attacks"]:
        assert abs(a["auc"] - 0.5) < 0.1, a
    assert same["epsilon_estimate"] < 3.0
    # one model's patients are not the randomised membership a lower bound needs
    assert "estimate from one model, not a lower bound" in same["reading"]
    assert "proves" not in same["reading"] and "Steinke" in same["estimate_kind"]


def test_an_estimate_above_the_guarantee_asks_for_an_investigation():
    rng = np.random.default_rng(3)
    audit = audit_predictions(
        _predictions(200, 0.01, rng, "m"),
        _predictions(100, 2.0, rng, "o"),
        theoretical_epsilon=0.1,
        delta=1e-4,
    )
    assert audit["epsilon_estimate"] > 0.1
    assert "ABOVE the guarantee" in audit["reading"] and "investigate" in audit["reading"]


@pytest.mark.parametrize("n_members, n_others", [(1, 5), (5, 1)])
def test_tiny_groups_give_no_claim_instead_of_an_error(n_members, n_others):
    rng = np.random.default_rng(4)
    audit = audit_predictions(
        _predictions(n_members, 0.5, rng, "m"),
        _predictions(n_others, 0.5, rng, "o"),
        theoretical_epsilon=3.0,
        delta=1e-4,
    )
    assert audit["epsilon_estimate"] == 0.0


def test_threshold_attack_auc_equals_an_independent_roc_of_minus_the_loss():
    """privacy_tests' THRESHOLD_ATTACK on our per-patient losses == sklearn's ROC AUC."""
    from sklearn.metrics import roc_auc_score

    from covidct.privacy.audit import patient_features

    rng = np.random.default_rng(5)
    members, others = _predictions(60, 0.3, rng, "m"), _predictions(30, 0.6, rng, "o")
    audit = audit_predictions(members, others, theoretical_epsilon=3.0, delta=1e-4)
    lm, lo = patient_features(members).mean_loss, patient_features(others).mean_loss
    want = roc_auc_score(np.r_[np.ones(len(lm)), np.zeros(len(lo))], np.r_[-lm, -lo])
    got = {a["attack"]: a["auc"] for a in audit["attacks"]}["loss_threshold"]
    assert got == pytest.approx(want, abs=1e-12)
    assert "privacy_tests" in audit["attack_library"]


def test_audit_claims_nothing_on_identically_distributed_unequal_groups():
    """Cross-validated attacker scores separate identical groups of unequal size (AUC < 0.5);
    bounding their rates "proved" epsilon > 0 in 3 of these 8 trials. The audit's trained
    attacker is fitted on one half and tested on the other, so it claims nothing here."""
    claims = []
    for s in range(8):
        rng = np.random.default_rng(100 + s)
        audit = audit_predictions(
            _predictions(1400, 0.5, rng, "m"),
            _predictions(600, 0.5, rng, "o"),
            theoretical_epsilon=3.0,
            delta=1e-4,
            seed=s,
        )
        claims += [a["epsilon_estimate"] for a in audit["attacks"]]
    assert sum(c > 0 for c in claims) <= 1, claims  # 16 bounds at 97.5% each
