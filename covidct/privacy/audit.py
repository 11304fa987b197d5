"""Empirical privacy audit: can an attacker tell training patients from held-out ones?

A membership-inference attack sees a patient's scans and the model's outputs on them and guesses
whether that patient was in the training set. Two attackers from tensorflow-privacy's
``privacy_tests`` (``membership_inference_attack.run_attacks``), both black-box and per patient
(the privacy unit):

- ``loss_threshold`` (THRESHOLD_ATTACK): training patients tend to have lower loss; the score is
  minus the patient's mean slice loss (Yeom et al., "Privacy Risk in Machine Learning", CSF 2018);
- ``logistic_regression`` (LOGISTIC_REGRESSION): a trained attacker on loss and confidence
  features (mean, max, min and spread of the slice losses, mean and max probability, the label)
  (Shokri et al., S&P 2017). Its AUC and advantage are privacy_tests' (scored on
  cross-validation folds it was not fitted on); its epsilon bound comes from an attacker of the
  same kind fitted on one half of the patients and tested on the other
  (``trained_attack_epsilon``: cross-validated scores are not a fixed test, and on
  identically distributed groups they "prove" privacy loss that is not there).

From each attack's true- and false-positive rates follows an empirical epsilon: any
(epsilon, delta)-DP mechanism has TPR <= e^eps FPR + delta and TNR <= e^eps FNR + delta
(Kairouz et al. 2015). The threshold is chosen on one random half of the patients and the rates
are bounded on the other half with Clopper-Pearson intervals (Jagielski et al., "Auditing
Differentially Private Machine Learning", NeurIPS 2020).

The figure is an ESTIMATE FROM ONE MODEL, not a lower bound on the mechanism's epsilon. A lower
bound needs the randomness of training inside the test: many models trained with and without
the audited patients (Jagielski et al. 2020), or membership drawn by independent coin flips
before one training run (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training
Run", NeurIPS 2023). Here membership is the patient split, fixed before training and not drawn
independently per patient, and the rates are measured across patients on one model. So the
estimate says how well these attacks separate this model's training patients from its held-out
ones; a figure far below the guarantee is the normal outcome (these attacks are weak), and one
above it is a reason to investigate the training and the accounting. Each attack's estimate is
taken at 1 - (1 - confidence) / 2, so the larger of the two is at the stated confidence.

tensorflow-privacy 0.9.0's wheel lacks ``privacy_tests``; ``tools/install_privacy_tests.py``
installs that package from the 0.8.12 wheel (pinned by hash). The epsilon lower bound is
computed here, from the attacks' membership scores, with the held-out half described above.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from covidct.evaluate import Predictions
from covidct.runs import number_out

__all__ = [
    "AUDIT_FORMAT",
    "attack_epsilon",
    "audit_predictions",
    "patient_features",
    "trained_attack_epsilon",
]

AUDIT_FORMAT = "covidct-audit-2"  # 2: "epsilon_estimate" (one model), was "epsilon_lower_bound"
_P_EPS = 1e-7  # probabilities are clipped away from 0 and 1 before taking logs

FEATURES = (
    "mean_loss",
    "max_loss",
    "min_loss",
    "std_loss",
    "mean_prob",
    "max_prob",
    "label",
)


@dataclass(frozen=True)
class PatientFeatures:
    ids: list[str]
    labels: np.ndarray  # (P,)
    features: np.ndarray  # (P, len(FEATURES))

    @property
    def mean_loss(self) -> np.ndarray:
        return self.features[:, 0]


def patient_features(pred: Predictions) -> PatientFeatures:
    """Per patient: loss and confidence summaries of its slices (see ``FEATURES``)."""
    order: dict[str, list[int]] = {}
    for i, p in enumerate(pred.patients):
        order.setdefault(p, []).append(i)
    ids = sorted(order)
    rows, labels = [], []
    for p in ids:
        idx = order[p]
        prob = np.clip(pred.probs[idx].astype(np.float64), _P_EPS, 1 - _P_EPS)
        y = float(pred.labels[idx[0]])
        loss = -(y * np.log(prob) + (1 - y) * np.log1p(-prob))
        rows.append([loss.mean(), loss.max(), loss.min(), loss.std(), prob.mean(), prob.max(), y])
        labels.append(y)
    return PatientFeatures(ids, np.array(labels), np.array(rows, dtype=np.float64))


def _clopper_pearson(k: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided (1 - alpha) lower and upper bounds on a binomial rate k / n."""
    k = np.asarray(k, dtype=np.float64)
    lo = np.where(k > 0, stats.beta.ppf(alpha, k, n - k + 1), 0.0)
    hi = np.where(k < n, stats.beta.ppf(1 - alpha, k + 1, n - k), 1.0)
    return lo, hi


def _eps_from_rates(tpr_lo: np.ndarray, fpr_hi: np.ndarray, delta: float) -> np.ndarray:
    """The largest eps that the rate bounds prove, in either direction of the test."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.maximum(tpr_lo - delta, 0.0) / fpr_hi)  # TPR <= e^eps FPR + delta
        tnr_lo, fnr_hi = 1.0 - fpr_hi, 1.0 - tpr_lo
        b = np.log(np.maximum(tnr_lo - delta, 0.0) / fnr_hi)  # TNR <= e^eps FNR + delta
    out = np.fmax(a, b)
    return np.where(np.isfinite(out), np.maximum(out, 0.0), 0.0)


def _bounds_at(
    members: np.ndarray, others: np.ndarray, thresholds: np.ndarray, delta: float, alpha: float
) -> np.ndarray:
    """Proven eps for the tests "score >= t", each rate bounded at one-sided level alpha."""
    tp = (members[None, :] >= thresholds[:, None]).sum(axis=1)
    fp = (others[None, :] >= thresholds[:, None]).sum(axis=1)
    tpr_lo, _ = _clopper_pearson(tp, len(members), alpha)
    _, fpr_hi = _clopper_pearson(fp, len(others), alpha)
    return _eps_from_rates(tpr_lo, fpr_hi, delta)


Halves = tuple[np.ndarray, np.ndarray]  # (members, others)


def _random_halves(members: np.ndarray, others: np.ndarray, seed: int) -> tuple[Halves, Halves]:
    """Each group's rows shuffled and cut in two: (first halves, second halves)."""
    rng = np.random.default_rng(seed)
    m = np.asarray(members, np.float64)[rng.permutation(len(members))]
    o = np.asarray(others, np.float64)[rng.permutation(len(others))]
    half_m, half_o = len(m) // 2, len(o) // 2
    return (m[:half_m], o[:half_o]), (m[half_m:], o[half_o:])


def _select_then_bound(
    selection: Halves,
    evaluation: Halves,
    delta: float,
    alpha: float,
) -> float:
    """Choose the threshold on one set of patients, bound the rates on another.

    The candidates are the percentiles (1st to 99th) of the selection scores: a threshold that
    keeps only a handful of patients looks best on the selection half by chance and proves
    little on the other.
    """
    m_sel, o_sel = selection
    pooled = np.concatenate([m_sel, o_sel])
    candidates = np.unique(np.quantile(pooled, np.linspace(0.01, 0.99, 99), method="lower"))
    chosen = candidates[int(np.argmax(_bounds_at(m_sel, o_sel, candidates, delta, alpha)))]
    m_eval, o_eval = evaluation
    return float(_bounds_at(m_eval, o_eval, np.array([chosen]), delta, alpha)[0])


def attack_epsilon(
    member_scores: np.ndarray,
    other_scores: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    seed: int = 0,
) -> float:
    """The epsilon the attack's measured rates imply, at ``confidence``.

    When every score is an independent draw of the mechanism's output with and without the
    audited unit (randomized response in the tests), this is a lower bound on its epsilon with
    probability >= ``confidence``. On the patients of one trained model it is an estimate (see
    the module docstring).

    The threshold is chosen on a random half of each group and the rates are bounded on the
    other half (choosing and measuring on the same patients would overstate the bound). The two
    rates are bounded at level (1 - confidence) / 2 each, so both hold jointly. Each score must
    depend on its own patient only (a fixed function of that patient's outputs): scores from an
    attacker fitted on these same patients are not (see ``trained_attack_epsilon``).

    Args:
        member_scores: the attack's scores for training patients (higher = "member").
        other_scores: its scores for held-out patients.
        delta: the delta of the guarantee being audited.
        confidence: probability that the returned bound is valid.
        seed: seeds the split into halves.

    Returns:
        The epsilon (0.0 when the rates imply nothing).
    """
    if len(member_scores) < 2 or len(other_scores) < 2:
        return 0.0
    selection, evaluation = _random_halves(member_scores, other_scores, seed)
    return _select_then_bound(selection, evaluation, delta, (1.0 - confidence) / 2)


def trained_attack_epsilon(
    member_features: np.ndarray,
    other_features: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    seed: int = 0,
) -> float:
    """The epsilon a logistic-regression attacker's rates imply, at ``confidence`` (a lower
    bound only under the conditions of ``attack_epsilon``).

    The attacker (standardised features, balanced classes) is fitted on a random half of each
    group, and its threshold is chosen on that half too; the rates of the resulting fixed test
    are bounded on the other half, which it has never seen. Scoring each patient with an
    attacker fitted on folds of the same patients (privacy_tests' cross-validated scores) is not
    a fixed test: with unequal groups, leaving a fold out tilts the attacker against that
    fold's group, so even identically distributed groups come out separated (AUC below 0.5)
    and the Clopper-Pearson bound on such scores claims privacy loss that is not there.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if min(len(member_features), len(other_features)) < 4:  # halves too small to fit on
        return 0.0
    (m_fit, o_fit), (m_eval, o_eval) = _random_halves(member_features, other_features, seed)
    attacker = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))
    attacker.fit(
        np.concatenate([m_fit, o_fit]), np.concatenate([np.ones(len(m_fit)), np.zeros(len(o_fit))])
    )
    score = attacker.decision_function
    return _select_then_bound(
        (score(m_fit), score(o_fit)),
        (score(m_eval), score(o_eval)),
        delta,
        (1.0 - confidence) / 2,
    )


def _attack_summary(
    name: str, member: np.ndarray, other: np.ndarray, bound: float
) -> dict[str, Any]:
    y = np.concatenate([np.ones(len(member)), np.zeros(len(other))])
    s = np.concatenate([member, other])
    fpr, tpr, _ = roc_curve(y, s)
    return {
        "attack": name,
        "auc": float(roc_auc_score(y, s)),
        "advantage": float(np.max(tpr - fpr)),
        "epsilon_estimate": bound,
    }


def _attack_scores(
    members: PatientFeatures, others: PatientFeatures, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Membership scores (higher = "member") of each privacy_tests attack."""
    from covidct.tfsetup import privacy_tests

    mia, ds = privacy_tests()
    data = ds.AttackInputData(
        logits_train=members.features,
        logits_test=others.features,
        loss_train=members.mean_loss,
        loss_test=others.mean_loss,
    )
    kinds = {
        "loss_threshold": ds.AttackType.THRESHOLD_ATTACK,
        "logistic_regression": ds.AttackType.LOGISTIC_REGRESSION,
    }
    if min(len(members.ids), len(others.ids)) < 2:  # too few to fit an attacker on folds
        kinds.pop("logistic_regression")
    state = np.random.get_state()
    np.random.seed(seed)  # privacy_tests draws its folds from NumPy's global generator
    try:
        # privacy_tests' own epsilon estimate divides by empty counts on small groups: its
        # RuntimeWarnings are noise here (the bound reported is ours, see above)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # sklearn 1.6 vs scipy 1.17
            results = mia.run_attacks(
                data,
                ds.SlicingSpec(entire_dataset=True, by_class=False),
                attack_types=tuple(kinds.values()),
            )
    finally:
        np.random.set_state(state)
    by_type = {r.attack_type: r for r in results.single_attack_results}
    return {
        name: (
            np.asarray(by_type[kind].membership_scores_train, np.float64),
            np.asarray(by_type[kind].membership_scores_test, np.float64),
        )
        for name, kind in kinds.items()
    }


def audit_predictions(
    members: Predictions,
    others: Predictions,
    *,
    theoretical_epsilon: float,
    delta: float,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Run both attacks on per-patient outputs and say how to read them.

    Args:
        members: the model's slice probabilities on its training patients.
        others: the same on patients it never trained on (validation and test).
        theoretical_epsilon: the run's guarantee (``math.inf`` when not private).
        delta: the run's delta (for the non-private baseline, the delta a DP run would use).
        confidence: of the empirical lower bounds.
        seed: seeds the cross-validation folds and the halves of the bound.

    Returns:
        The audit as a JSON-ready dict (``format`` = AUDIT_FORMAT).
    """
    fm, fo = patient_features(members), patient_features(others)
    scores = _attack_scores(fm, fo, seed)
    # the reported bound is the largest of the attacks' bounds: each is computed at
    # 1 - (1 - confidence) / (number of attacks) so that all hold jointly at ``confidence``
    each = 1.0 - (1.0 - confidence) / len(scores)
    bounds = {
        "loss_threshold": lambda: attack_epsilon(
            *scores["loss_threshold"], delta=delta, confidence=each, seed=seed
        ),
        "logistic_regression": lambda: trained_attack_epsilon(
            fm.features, fo.features, delta=delta, confidence=each, seed=seed
        ),
    }
    attacks = [_attack_summary(name, m, o, bounds[name]()) for name, (m, o) in scores.items()]
    best = max(attacks, key=lambda a: a["auc"])
    lower = max(a["epsilon_estimate"] for a in attacks)
    return {
        "format": AUDIT_FORMAT,
        "unit": "patient",
        "members": len(fm.ids),
        "non_members": len(fo.ids),
        "non_member_splits": ["validation", "test"],
        "attack_library": "tensorflow-privacy privacy_tests (membership_inference_attack)",
        "attacks": attacks,
        "attack_auc": best["auc"],
        "attack_advantage": max(a["advantage"] for a in attacks),
        "epsilon_estimate": lower,
        "estimate_kind": ESTIMATE_KIND,
        "confidence": confidence,
        "theoretical_epsilon": number_out(theoretical_epsilon),
        "delta": delta,
        "reading": reading(theoretical_epsilon, lower, best["auc"], confidence),
        "caveat": CAVEAT,
    }


ESTIMATE_KIND = (
    "an estimate from one trained model (the patient split, not randomised membership): not a "
    "lower bound on the mechanism's epsilon (that needs many models, or the one-run audit of "
    "Steinke, Nasr & Jagielski 2023)"
)


def epsilon_estimate(entry: dict[str, Any]) -> float:
    """An audit's (or one attack's) epsilon estimate; audits written before format 2 called it
    ``epsilon_lower_bound``."""
    value = entry.get("epsilon_estimate", entry.get("epsilon_lower_bound"))
    return float("nan") if value is None else float(value)


CAVEAT = (
    "The audit computes a few aggregate figures from the model's outputs on the training "
    "patients without added noise, so these figures themselves are not covered by the "
    "guarantee: share them with the same care as the training data."
)


def reading(theoretical: float, lower: float, auc: float, confidence: float) -> str:
    """One paragraph on how to read the empirical bound next to the guarantee."""
    pct = f"{100 * confidence:.0f}%"
    head = (
        f"The strongest attack told training patients from held-out ones with AUC {auc:.3f} "
        f"(0.5 = guessing); on this one model its rates correspond to epsilon {lower:.3g} "
        f"({pct} confidence). That is an estimate from one model, not a lower bound on the "
        "mechanism."
    )
    if math.isinf(theoretical):
        return (
            f"{head} This model has no privacy guarantee, so nothing bounds a stronger attack; "
            "a low audit result does not make it private."
        )
    if lower > theoretical:
        return (
            f"{head} It is ABOVE the guarantee (epsilon = {theoretical:.3g}): investigate the "
            "training and the accounting before releasing this model, and report the run."
        )
    return (
        f"{head} The guarantee (epsilon = {theoretical:.3g}) bounds every possible attack; "
        "this audit measures two simple ones on one model, so its figure is expected to be "
        "lower."
    )


def audit_model(
    model: Any, train_units: Any, store: Any, held_out: list[Predictions], report: Any
) -> dict[str, Any]:
    """Membership inference: the training patients (``train_units``, predicted here) against
    the held-out patients' predictions, checked against the report's epsilon."""
    from covidct.evaluate import predict

    members = predict(model, train_units, store)
    others = Predictions(
        patients=[p for pred in held_out for p in pred.patients],
        labels=np.concatenate([pred.labels for pred in held_out]),
        probs=np.concatenate([pred.probs for pred in held_out]),
    )
    return audit_predictions(
        members, others, theoretical_epsilon=report.epsilon, delta=report.delta
    )
