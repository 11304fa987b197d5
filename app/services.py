"""What the dashboard shows, computed without Streamlit (so it is unit-tested on its own):
the runs table, the privacy/utility curves, and predictions on an uploaded scan."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covidct import runs
from covidct.inference import ModelBundle, ScanPrediction, grad_cam, predict_scan
from covidct.runs import Run, SweepFolder, read_number
from data_prep.uploads import UploadedScan, UploadLimits, read_upload

__all__ = [
    "ScanResult",
    "curves_rows",
    "find_runs",
    "heat_map_kind",
    "heat_overlay",
    "predict_upload",
    "runs_table",
]

DISCLAIMER = (
    "Research tool, not a diagnosis: covidct is not a medical device. Every result must be "
    "reviewed by a radiologist with the full study and the clinical context."
)


def find_runs(root: Path) -> list[Path]:
    """Every finished run under ``root`` (run folders, and the runs inside sweep folders)."""
    return [run.path for run in runs.find_runs(root)]


def runs_table(runs: Sequence[Path], root: Path) -> list[dict[str, Any]]:
    """One row per run: privacy, utility and audit at a glance."""
    from covidct.privacy.audit import epsilon_estimate

    rows = []
    for run in runs:
        report = Run(run).read_or(Run.REPORT_JSON, None) or {}
        metrics = Run(run).read_or(Run.METRICS, None) or {}
        audit = report.get("audit") or {}
        patient = metrics.get("patient") or {}
        rows.append(
            {
                "run": str(run.relative_to(root)) if run.is_relative_to(root) else run.name,
                "target epsilon": read_number(report.get("target_epsilon")),
                "epsilon": read_number(report.get("epsilon")),
                "delta": read_number(report.get("delta")),
                "privacy unit": report.get("privacy_unit"),
                "test patient AUC": read_number(patient.get("auc")),
                "attack AUC": read_number(audit.get("attack_auc")),
                "audit epsilon (estimate)": read_number(epsilon_estimate(audit)) if audit else None,
            }
        )
    return rows


def curves_rows(root: Path) -> list[dict[str, Any]]:
    """Rows of every sweep's curves.csv under ``root``, plus the runs that are in no sweep."""
    rows: list[dict[str, Any]] = []
    in_sweeps: set[Path] = set()
    for curves in sorted(root.rglob(SweepFolder.CURVES)) if root.is_dir() else []:
        sweep = curves.parent
        with curves.open(newline="") as f:
            for r in csv.DictReader(f):
                rows.append(_curve_row(r, sweep.name, sweep / SweepFolder.RUNS / r["run_id"]))
                in_sweeps.add((sweep / SweepFolder.RUNS / r["run_id"]).resolve())
    for run in find_runs(root):
        if run.resolve() in in_sweeps:
            continue
        report = Run(run).read_or(Run.REPORT_JSON, None) or {}
        metrics = Run(run).read_or(Run.METRICS, None) or {}
        cfg = Run(run).read_or(Run.META, None) or {}
        audit = report.get("audit") or {}
        raw = {
            "run_id": run.name,
            "model": cfg.get("model", ""),
            "epsilon_target": report.get("target_epsilon") or report.get("epsilon"),
            "epsilon_achieved": report.get("epsilon"),
            "batch_size": report.get("expected_batch_size"),
            "seed": cfg.get("seed", ""),
            "patient_auc": (metrics.get("patient") or {}).get("auc"),
            "attack_auc": audit.get("attack_auc"),
        }
        rows.append(_curve_row(raw, "(single runs)", run))
    return rows


def _curve_row(r: dict[str, Any], sweep: str, run: Path) -> dict[str, Any]:
    target = read_number(r.get("epsilon_target"))
    history = Run(run).read_or(Run.HISTORY, None) or []
    model = r.get("model") or (Run(run).read_or(Run.META, None) or {}).get("model", "")
    return {
        "sweep": sweep,
        "run": r.get("run_id"),
        "model": model,
        "epsilon_target": target,
        "private": target is not None and math.isfinite(target),
        "epsilon_achieved": read_number(r.get("epsilon_achieved")),
        "batch_size": read_number(r.get("batch_size")),
        "seed": r.get("seed"),
        "patient_auc": read_number(r.get("patient_auc")),
        "attack_auc": read_number(r.get("attack_auc")),
        "epsilon_per_epoch": [read_number(h.get("epsilon")) for h in history],
    }


@dataclass
class ScanResult:
    """Everything the Predict page shows for one upload (no identifiers)."""

    scan: UploadedScan
    prediction: ScanPrediction
    notes: list[str] = field(default_factory=list)

    @property
    def n_slices(self) -> int:
        return len(self.prediction.slice_probs)


def predict_upload(
    bundle: ModelBundle, files: Sequence[tuple[str, bytes]], limits: UploadLimits | None = None
) -> ScanResult:
    """Read an upload in memory with the model's own slice settings and predict.

    Raises:
        InputError: nothing usable in the upload (the message says why, file by file).
    """
    scan = read_upload(files, bundle.settings, limits)
    notes = []
    if scan.kind == "gray8":
        notes.append(
            "8-bit images carry display values, not Hounsfield units: the result is reliable "
            "only if the model was trained on images exported the same way."
        )
    return ScanResult(scan, predict_scan(bundle, scan.slices), notes)


def heat_map_kind(bundle: ModelBundle) -> str:
    """What the heat map is, for its caption (``inference.grad_cam`` picks it by the model)."""
    if bundle.explains_by_contributions:
        return "Per-region contributions (ground-glass blobs through the linear head)"
    return "Grad-CAM"


def heat_overlay(bundle: ModelBundle, result: ScanResult, index: int) -> np.ndarray:
    """RGB uint8 image: the model's input slice with its heat map in red, at display size."""
    from PIL import Image

    cam = grad_cam(bundle, result.scan.slices[index])
    base = result.scan.display[index]
    h, w = base.shape
    cam_big = (
        np.asarray(
            Image.fromarray((cam * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
        / 255.0
    )
    gray = base.astype(np.float32) / 255.0
    rgb = np.stack([gray, gray, gray], axis=-1)
    alpha = 0.55 * cam_big[..., None]
    red = np.zeros_like(rgb)
    red[..., 0] = 1.0
    return (np.clip((1 - alpha) * rgb + alpha * red, 0, 1) * 255).astype(np.uint8)
