"""Slice- and patient-level metrics, with the operating threshold chosen on validation."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve


class PatientScore(enum.Enum):
    """How slice probabilities become one patient probability."""

    MEAN = "mean"
    MAX = "max"
    TOP3_MEAN = "top3-mean"  # robust to one noisy slice, still sensitive to focal disease
    MEAN_LOGIT = "mean-logit"  # sigmoid of the mean slice logit (matches unit_loss mean-logit)


def aggregate(probs: np.ndarray, how: PatientScore) -> float:
    if probs.size == 0:
        raise ValueError("no slice probabilities to aggregate")
    if how is PatientScore.MAX:
        return float(probs.max())
    if how is PatientScore.TOP3_MEAN:
        return float(np.sort(probs)[-3:].mean())
    if how is PatientScore.MEAN_LOGIT:
        p = np.clip(probs.astype(np.float64), 1e-12, 1 - 1e-12)
        return float(1.0 / (1.0 + np.exp(-np.mean(np.log(p) - np.log1p(-p)))))
    return float(probs.mean())


@dataclass
class Predictions:
    """Per-slice probabilities of a split, with their patients and labels."""

    patients: list[str]
    labels: np.ndarray
    probs: np.ndarray

    def by_patient(self, how: PatientScore) -> tuple[list[str], np.ndarray, np.ndarray]:
        order: dict[str, list[int]] = {}
        for i, p in enumerate(self.patients):
            order.setdefault(p, []).append(i)
        ids = sorted(order)
        scores = np.array([aggregate(self.probs[order[p]], how) for p in ids])
        labels = np.array([self.labels[order[p][0]] for p in ids])
        return ids, labels, scores


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (Youden's J) — chosen on validation."""
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    return float(min(max(thresholds[best], 0.0), 1.0))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUC, accuracy, sensitivity, specificity and confusion matrix at ``threshold``."""
    pred = (scores >= threshold).astype(int)
    labels = labels.astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    both = len(np.unique(labels)) == 2
    return {
        "n": len(labels),
        "auc": float(roc_auc_score(labels, scores)) if both else None,
        "accuracy": float((tp + tn) / max(len(labels), 1)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
        "threshold": float(threshold),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def auc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")


def split_metrics(test: Predictions, validation: Predictions, how: PatientScore) -> dict[str, Any]:
    """Test metrics at thresholds chosen on validation (never on test), slice and patient level.

    Slice-level labels are the patient's label (the manifest has no per-slice truth).
    """
    _, v_labels, v_scores = validation.by_patient(how)
    patient_threshold = youden_threshold(v_labels, v_scores)
    slice_threshold = youden_threshold(validation.labels, validation.probs)
    _, t_labels, t_scores = test.by_patient(how)
    return {
        "patient": binary_metrics(t_labels, t_scores, patient_threshold),
        "slice": binary_metrics(test.labels, test.probs, slice_threshold),
        "patient_score": how.value,
        "threshold_chosen_on": "validation",
        "slice_labels": "each slice carries its patient's label",
    }


def predict(model: Any, units: Any, store: Any, *, batch: int = 256) -> Predictions:
    """Slice probabilities for every slice of ``units`` (a ``covidct.data.units.Units``;
    inference mode): the one prediction loop over prepared data (training's validation and
    test, the audit, the studies).

    ``store``: a ``SliceStore`` for a model on slices, a ``FeatureStore`` for a feature head.
    """
    refs = [
        (units.patients[u], units.labels[u], ref)
        for u in range(len(units))
        for ref in units.slices[u]
    ]
    probs = np.empty(len(refs), np.float32)
    for start in range(0, len(refs), batch):
        part = refs[start : start + batch]
        x = store.inputs([ref for _, _, ref in part])
        logits = model(x, training=False).numpy()[:, 0]
        probs[start : start + len(part)] = 0.5 * (1.0 + np.tanh(logits / 2.0))  # sigmoid
    return Predictions(
        patients=[p for p, _, _ in refs],
        labels=np.array([lab for _, lab, _ in refs], np.float32),
        probs=probs,
    )
