"""PNG plots of sweeps (matplotlib, no display needed): utility vs epsilon, utility vs logical
batch size at fixed epsilon, and epsilon spent vs epoch."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

from covidct.runs import Run

matplotlib.use("Agg")  # before pyplot: no display on servers and in tests

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

__all__ = ["sweep_plots"]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _stats(values: list[float]) -> tuple[float, float, float]:
    return sum(values) / len(values), min(values), max(values)


def _auc_by(rows: list[dict[str, Any]], key: str) -> dict[Any, list[float]]:
    out: dict[Any, list[float]] = {}
    for r in rows:
        if r["patient_auc"] is not None:
            out.setdefault(r[key], []).append(float(r["patient_auc"]))
    return out


def _baseline(ax: Any, rows: list[dict[str, Any]]) -> None:
    base = [
        float(r["patient_auc"])
        for r in rows
        if math.isinf(r["epsilon_target"]) and r["patient_auc"] is not None
    ]
    if base:
        m, lo, hi = _stats(base)
        ax.axhline(m, color="black", linestyle="--", label=f"non-private baseline ({m:.3f})")
        if hi > lo:
            ax.axhspan(lo, hi, color="black", alpha=0.08)


def _finish(ax: Any, title: str, xlabel: str, empty: bool) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test patient AUC")
    ax.set_ylim(0.0, 1.02)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    if empty:
        ax.text(0.5, 0.5, "no private runs yet", ha="center", transform=ax.transAxes)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)


def _utility_vs_epsilon(rows: list[dict[str, Any]]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4))
    private = [r for r in rows if not math.isinf(r["epsilon_target"])]
    for batch in sorted({r["batch_size"] for r in private}):
        by_eps = _auc_by([r for r in private if r["batch_size"] == batch], "epsilon_target")
        xs = sorted(by_eps)
        s = [_stats(by_eps[x]) for x in xs]
        ax.plot(xs, [m for m, _, _ in s], marker="o", label=f"batch {batch} (mean over seeds)")
        ax.fill_between(xs, [lo for _, lo, _ in s], [hi for _, _, hi in s], alpha=0.2)
    _baseline(ax, rows)
    if private:
        ax.set_xscale("log")
        ticks = sorted({r["epsilon_target"] for r in private})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    _finish(ax, "Utility vs privacy budget", "target epsilon (log scale)", not private)
    return _png(fig)


def _utility_vs_batch(rows: list[dict[str, Any]]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4))
    private = [r for r in rows if not math.isinf(r["epsilon_target"])]
    for eps in sorted({r["epsilon_target"] for r in private}):
        by_batch = _auc_by([r for r in private if r["epsilon_target"] == eps], "batch_size")
        xs = sorted(by_batch)
        s = [_stats(by_batch[x]) for x in xs]
        means = [m for m, _, _ in s]
        ax.errorbar(
            xs,
            means,
            yerr=[[m - lo for m, lo, _ in s], [hi - m for m, _, hi in s]],
            marker="o",
            capsize=3,
            label=f"epsilon {eps:g}",
        )
    _baseline(ax, rows)
    if private:
        ticks = sorted({r["batch_size"] for r in private})
        if ticks[0] > 0:  # 0 = every patient every step: no place on a log axis
            ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, ["all" if t == 0 else str(t) for t in ticks])
        ax.minorticks_off()
    _finish(
        ax,
        "Utility vs logical batch size at fixed epsilon",
        "expected logical batch size",
        not private,
    )
    return _png(fig)


def _epsilon_vs_epoch(rows: list[dict[str, Any]], runs: Path) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4))
    shown = 0
    for r in sorted(rows, key=lambda r: (r["epsilon_target"], r["batch_size"])):
        if math.isinf(r["epsilon_target"]) or r["seed"] != 0:
            continue
        history = Run(runs / r["run_id"]).read(Run.HISTORY)
        eps = [float(h["epsilon"]) for h in history]
        ax.plot(
            range(1, len(eps) + 1),
            eps,
            marker=".",
            label=f"target {r['epsilon_target']:g}, batch {r['batch_size']}",
        )
        shown += 1
    ax.set_title("Privacy spent during training")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("epsilon spent (cumulative)")
    if not shown:
        ax.text(0.5, 0.5, "no private runs yet", ha="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def sweep_plots(rows: list[dict[str, Any]], runs: Path) -> dict[str, bytes]:
    """File name -> PNG bytes for the three sweep plots."""
    from covidct.runs import SweepFolder

    figures = (_utility_vs_epsilon(rows), _utility_vs_batch(rows), _epsilon_vs_epoch(rows, runs))
    return dict(zip(SweepFolder.FIGURES, figures, strict=True))
