"""``covidct sweep``: a grid of trainings over epsilon, logical batch size and seed.

``sweeps/<id>/`` holds ``sweep.json`` (the grid and the training settings), ``runs/<point>/``
(one complete run folder per point, audit included), ``curves.csv`` (one row per finished run),
three PNG plots and ``sweep_report.md``. A point whose run folder holds ``run.json`` (written
last by ``covidct train``) is finished and never re-run; an interrupted point resumes from its
last checkpoint (its steps stay counted), or starts again when it died before its first step.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from covidct.runs import Run, SweepFolder, epsilon_tag, number_out, read_number, to_json, write_json
from covidct.train_config import TrainConfig
from data_prep.atomic import atomic_write_bytes, atomic_write_text
from data_prep.errors import CovidCTError

__all__ = [
    "CURVE_COLUMNS",
    "SweepError",
    "SweepPoint",
    "collect_rows",
    "parse_epsilons",
    "run_sweep",
    "write_outputs",
]


class SweepError(CovidCTError):
    """A bad sweep request, or a sweep folder that belongs to another grid."""


@dataclass(frozen=True)
class SweepPoint:
    epsilon: float  # math.inf: the non-private baseline
    batch_size: int
    seed: int

    @property
    def run_id(self) -> str:
        return f"eps{epsilon_tag(self.epsilon)}_b{self.batch_size}_s{self.seed}"


CURVE_COLUMNS = (
    "run_id",
    "model",
    "epsilon_target",
    "epsilon_achieved",
    "delta",
    "noise_multiplier",
    "sampling_rate",
    "batch_size",
    "seed",
    "steps",
    "privacy_unit",
    "validation_patient_auc",
    "slice_auc",
    "slice_accuracy",
    "slice_sensitivity",
    "slice_specificity",
    "patient_auc",
    "patient_accuracy",
    "patient_sensitivity",
    "patient_specificity",
    "attack_auc",
    "epsilon_estimate",
)


def parse_epsilons(text: str) -> list[float]:
    """ "1,3,8,inf" -> [1.0, 3.0, 8.0, inf]; every value > 0."""
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise SweepError(f"--epsilons: {part!r} is not a number (use e.g. 1,3,8,inf)") from None
        if not value > 0:
            raise SweepError(f"--epsilons: {part} must be > 0 (or inf)")
        out.append(value)
    if not out:
        raise SweepError("--epsilons: give at least one value")
    return sorted(set(out))


def grid(epsilons: Sequence[float], batch_sizes: Sequence[int], seeds: int) -> list[SweepPoint]:
    if seeds < 1:
        raise SweepError(f"--seeds must be >= 1, got {seeds}")
    if any(b < 0 for b in batch_sizes):
        raise SweepError(
            f"--batch-sizes must be >= 1 (or 0: every patient every step), got {list(batch_sizes)}"
        )
    return [
        SweepPoint(e, b, s)
        for e in epsilons
        for b in sorted(set(batch_sizes))
        for s in range(seeds)
    ]


def _finished(run: Path) -> bool:
    return Run(run).is_finished


def run_sweep(
    prep: Path,
    out: Path,
    *,
    epsilons: Sequence[float],
    batch_sizes: Sequence[int],
    seeds: int,
    config: TrainConfig,
    resolved_config: dict[str, Any],
    on_point: Callable[[SweepPoint, str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every point not yet finished, then (re)write curves, plots and the report.

    Args:
        prep: the prepared dataset.
        out: the sweep folder (``sweeps/<id>``); created, or resumed when it exists.
        epsilons: target epsilons; ``inf`` trains the non-private baseline.
        batch_sizes: expected logical batch sizes (units per step).
        seeds: seeds 0..seeds-1 per (epsilon, batch size).
        config: the training settings shared by every point (batch size and seed are set per
            point).
        resolved_config: the full resolved config, recorded in sweep.json.
        on_point: called with (point, "skip" | "start" | "done") for progress display.

    Returns:
        The rows of curves.csv.

    Raises:
        SweepError: the folder holds a different grid or settings.
    """
    from covidct.checkpoint import PLAN, folder
    from covidct.train import resume, train

    points = grid(epsilons, batch_sizes, seeds)
    spec = {
        "format": "covidct-sweep-1",
        "prep": str(Path(prep).resolve()),
        "epsilons": sorted(set(epsilons)),
        "batch_sizes": sorted(set(batch_sizes)),
        "seeds": seeds,
        "train": resolved_config.get("train", {}),
    }
    _check_or_write_spec(out, spec)
    runs = out / SweepFolder.RUNS
    for point in points:
        run = runs / point.run_id
        if _finished(run):
            if on_point:
                on_point(point, "skip")
            continue
        if (folder(run) / PLAN).is_file():  # interrupted before run.json: continue it
            if on_point:
                on_point(point, "resume")
            resume(run)
            if on_point:
                on_point(point, "done")
            continue
        if run.exists():  # died before training began: nothing in it is final
            shutil.rmtree(run)
        if on_point:
            on_point(point, "start")
        train(
            prep,
            config=replace(config, batch_size=point.batch_size, seed=point.seed),
            target_epsilon=point.epsilon,
            runs_dir=runs,
            run_id=point.run_id,
            resolved_config={**resolved_config, "sweep_point": point.run_id},
        )
        if on_point:
            on_point(point, "done")
    rows = collect_rows(out, points)
    write_outputs(out, rows, spec)
    return rows


def _check_or_write_spec(out: Path, spec: dict[str, Any]) -> None:
    path = out / SweepFolder.SPEC
    if path.is_file():
        old = json.loads(path.read_text())
        if old != to_json(spec):
            raise SweepError(
                f"{out} holds a sweep with other settings (see {path}); "
                "give a new --out folder or the same grid and config to resume it"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(out, SweepFolder.SPEC, spec)


def collect_rows(out: Path, points: Sequence[SweepPoint]) -> list[dict[str, Any]]:
    """One row per finished point, read from its run folder."""
    from covidct.privacy.audit import epsilon_estimate

    rows = []
    for point in points:
        run = out / SweepFolder.RUNS / point.run_id
        if not _finished(run):
            continue
        finished = Run(run)
        report = finished.read(Run.REPORT_JSON)
        metrics, meta = finished.metrics(), finished.meta()
        audit = report.get("audit") or {}
        p, s = metrics["patient"], metrics["slice"]
        rows.append(
            {
                "run_id": point.run_id,
                "model": meta.get("model", ""),
                "epsilon_target": point.epsilon,
                "epsilon_achieved": read_number(report["epsilon"]),
                "delta": report["delta"],
                "noise_multiplier": report["noise_multiplier"],
                "sampling_rate": report["sampling_rate"],
                "batch_size": point.batch_size,
                "seed": point.seed,
                "steps": report["steps"],
                "privacy_unit": report["privacy_unit"],
                "validation_patient_auc": metrics.get("validation_patient_auc_best"),
                "slice_auc": s["auc"],
                "slice_accuracy": s["accuracy"],
                "slice_sensitivity": s["sensitivity"],
                "slice_specificity": s["specificity"],
                "patient_auc": p["auc"],
                "patient_accuracy": p["accuracy"],
                "patient_sensitivity": p["sensitivity"],
                "patient_specificity": p["specificity"],
                "attack_auc": audit.get("attack_auc"),
                "epsilon_estimate": epsilon_estimate(audit) if audit else None,
            }
        )
    return rows


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        v = number_out(v)  # "inf" / None (NaN) / a finite float
        if v is None:
            return ""
        return v if isinstance(v, str) else f"{v:.6g}"
    return str(v)


def write_outputs(out: Path, rows: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    """curves.csv, the three plots and sweep_report.md, each written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CURVE_COLUMNS)
    for r in rows:
        writer.writerow([_csv_value(r[c]) for c in CURVE_COLUMNS])
    atomic_write_text(out / SweepFolder.CURVES, buf.getvalue())
    from covidct import plots

    for name, png in plots.sweep_plots(rows, out / SweepFolder.RUNS).items():
        atomic_write_bytes(out / name, png)
    atomic_write_text(out / SweepFolder.REPORT, sweep_report(rows, spec))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def sweep_report(rows: list[dict[str, Any]], spec: dict[str, Any]) -> str:
    lines = [
        "# Privacy/utility sweep",
        "",
        f"{len(rows)} finished runs on one prepared dataset: target epsilons "
        f"{', '.join(str(e) for e in spec['epsilons'])}; logical batch sizes "
        f"{', '.join(str(b) for b in spec['batch_sizes'])}; {spec['seeds']} seed(s) each. "
        "`inf` is the non-private baseline: the same model, schedule and data without clipping "
        "or noise, at its own learning rate (train.baseline_learning_rate: unclipped gradients "
        "have another scale).",
        "",
        "## Read this before choosing a configuration",
        "",
        "- Each run's epsilon covers that run alone. Comparing runs and keeping the best one is "
        "itself a use of the private data, with a privacy cost that no single run's epsilon "
        'includes (Papernot & Steinke, "Hyperparameter Tuning with Renyi Differential '
        'Privacy", ICLR 2022). Tune on public or synthetic data where you can, or count the '
        "whole sweep against the budget (each run adds its epsilon under basic composition).",
        "- Splits used here: training patients were seen only through DP-SGD; the validation "
        "split chose each run's operating threshold and best epoch; the test split is reported "
        "only. If you pick a configuration from this table, pick it by the validation column, "
        "and quote its test figures once.",
        "- Attack AUC is the empirical membership-inference audit of each run (0.5 = the "
        "attacker cannot tell training patients from others).",
        "",
        "## Results (test patients; mean and range over seeds)",
        "",
        "| target epsilon | batch | runs | epsilon achieved | validation AUC | test patient AUC "
        "| sensitivity | specificity | attack AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[float, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["epsilon_target"], r["batch_size"]), []).append(r)

    def cell(vals: list[Any]) -> str:
        v = [float(x) for x in vals if x is not None]
        if not v:
            return "n/a"
        if math.isinf(v[0]):
            return "inf"
        if len(v) == 1:
            return f"{v[0]:.3f}"
        return f"{_mean(v):.3f} ({min(v):.3f}-{max(v):.3f})"

    for (eps, batch), g in sorted(groups.items()):
        lines.append(
            f"| {'inf' if math.isinf(eps) else f'{eps:g}'} | {batch} | {len(g)} | "
            f"{cell([r['epsilon_achieved'] for r in g])} | "
            f"{cell([r['validation_patient_auc'] for r in g])} | "
            f"{cell([r['patient_auc'] for r in g])} | "
            f"{cell([r['patient_sensitivity'] for r in g])} | "
            f"{cell([r['patient_specificity'] for r in g])} | "
            f"{cell([r['attack_auc'] for r in g])} |"
        )
    lines += [
        "",
        "Plots: " + ", ".join(f"`{name}`" for name in SweepFolder.FIGURES) + "; "
        f"every number above is in `{SweepFolder.CURVES}`.",
        "",
    ]
    return "\n".join(lines)
