"""Crash-safe training state: ``runs/<id>/checkpoints/``.

Three files, each replaced atomically (write, fsync, rename), so a process killed at any moment
leaves either the old or the new version:

- ``plan.json`` (written once, before the first step): what the run was asked to do: the
  prepared dataset, the target epsilon and the training settings. ``covidct train --resume RUN``
  rebuilds the run from it.
- ``progress.json``: ``steps_counted``, every step ever STARTED in this run over all attempts.
  It is raised before a step's noisy update is applied, so a step whose update may have been
  observed (in memory, by a later checkpoint, by anyone) is always counted, and a step repeated
  after a crash is counted again.
- ``state.npz``: weights, optimizer slots, the best weights so far and the loop's counters
  (next step, history, early-stopping state) as of the last checkpoint. The slices drawn for each
  unit and their augmentation are pure functions of (seed, step). The Poisson sample and the
  noise come from the run's secret key (``covidct.privacy.secret``), which is never written:
  a resumed attempt draws a fresh key, so the steps it takes again are new, independently
  randomised steps, and they are counted again (``progress.json`` never goes down).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covidct.runs import Run, to_json
from data_prep.atomic import atomic_write_bytes, atomic_write_json
from data_prep.errors import CovidCTError

FORMAT = "covidct-checkpoint-1"
PLAN, PROGRESS, STATE = Run.PLAN, Run.PROGRESS, Run.STATE


class ResumeError(CovidCTError):
    """A run cannot be resumed (not a run, already finished, or its checkpoint is unreadable)."""


@dataclass
class LoopState:
    """The training loop's counters, saved with the weights.

    Attributes:
        next_step: the first step not yet applied (steps are numbered from 0).
        history: one record per finished epoch (validation AUC, epsilon, steps).
        best_auc: best validation patient AUC so far (-1 before the first epoch).
        bad_epochs: epochs since the best one (early stopping).
        attempts: how many times training started (1 + resumes).
        done: training is over (all steps, an early stop, or the budget): only finishing is left.
        committed: the steps counted plus those the run set out to take when this attempt
            started: what epsilon counts when an early stop (a rule that looks at results, not
            part of the mechanism) ends training sooner.
    """

    next_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_auc: float = -1.0
    bad_epochs: int = 0
    attempts: int = 1
    done: bool = False
    committed: int = 0


def folder(run: Path) -> Path:
    return run / Run.CHECKPOINTS


def write_plan(run: Path, plan: dict[str, Any]) -> None:
    atomic_write_json(folder(run) / PLAN, to_json({"format": FORMAT, **plan}))


def read_plan(run: Path) -> dict[str, Any]:
    path = folder(run) / PLAN
    if not path.is_file():
        raise ResumeError(
            f"{run} cannot be resumed: it has no {PLAN} (not a covidct run folder, or one written "
            "before resumable runs)"
        )
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ResumeError(f"cannot read {path}: {exc}") from exc
    if plan.get("format") != FORMAT:
        raise ResumeError(f"{path} has format {plan.get('format')!r}, expected {FORMAT}")
    return dict(plan)


def steps_counted(run: Path) -> int:
    """Every step ever started in this run (0 when training never began)."""
    path = folder(run) / PROGRESS
    if not path.is_file():
        return 0
    try:
        return int(json.loads(path.read_text())["steps_counted"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResumeError(f"cannot read {path}: {exc}") from exc


def count_step(run: Path, total: int) -> None:
    """Record that ``total`` steps have now been started (before the step's update is applied)."""
    atomic_write_json(folder(run) / PROGRESS, {"steps_counted": int(total)})


def save_state(
    run: Path,
    *,
    weights: list[np.ndarray],
    optimizer: list[np.ndarray],
    best_weights: list[np.ndarray],
    loop: LoopState,
    ema: list[np.ndarray] | None = None,
) -> None:
    """Write ``state.npz`` in one atomic replace (weights and counters always agree).

    ``ema``: the moving average of the weights, when the run keeps one.
    """
    ema = ema or []
    arrays: dict[str, np.ndarray] = {}
    for prefix, values in (("w", weights), ("o", optimizer), ("b", best_weights), ("e", ema)):
        for i, a in enumerate(values):
            arrays[f"{prefix}{i}"] = np.asarray(a)
    meta = {
        "format": FORMAT,
        "n": [len(weights), len(optimizer), len(best_weights), len(ema)],
        "next_step": loop.next_step,
        "history": loop.history,
        "best_auc": loop.best_auc,
        "bad_epochs": loop.bad_epochs,
        "attempts": loop.attempts,
        "done": loop.done,
        "committed": loop.committed,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    atomic_write_bytes(folder(run) / STATE, buf.getvalue())


@dataclass
class SavedState:
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    best_weights: list[np.ndarray]
    loop: LoopState
    ema: list[np.ndarray] = field(default_factory=list)


def load_state(run: Path) -> SavedState | None:
    """The last checkpoint, or None when the run was killed before its first one."""
    path = folder(run) / STATE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            nw, no, nb, *rest = meta["n"]  # checkpoints from before the EMA have three counts
            weights = [z[f"w{i}"] for i in range(nw)]
            opt = [z[f"o{i}"] for i in range(no)]
            best = [z[f"b{i}"] for i in range(nb)]
            ema = [z[f"e{i}"] for i in range(rest[0] if rest else 0)]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ResumeError(f"checkpoint {path} is unreadable ({exc}): the run cannot resume") from (
            exc
        )
    if meta.get("format") != FORMAT:
        raise ResumeError(f"{path} has format {meta.get('format')!r}, expected {FORMAT}")
    loop = LoopState(
        next_step=int(meta["next_step"]),
        history=list(meta["history"]),
        best_auc=float(meta["best_auc"]),
        bad_epochs=int(meta["bad_epochs"]),
        attempts=int(meta.get("attempts", 1)),
        done=bool(meta.get("done", False)),
        committed=int(meta.get("committed", 0)),
    )
    return SavedState(weights, opt, best, loop, ema)
