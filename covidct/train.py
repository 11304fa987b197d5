"""``covidct train``: NanoBatch DP-SGD on a prepared dataset, writing a complete run folder.

The story of a run, in order: check what can be refused (``training.checks``), plan privacy
(``privacy.plan``: sigma, q, steps, every epsilon), count the run in the ledger and open its
folder, build the model and the DP step (``training.build``), run the loop
(``training.loop``), then evaluate, audit and report (``training.finish``). The privacy
arithmetic is settled and validated before TensorFlow builds anything, so an unsatisfiable
request fails in a second with a clear message.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from covidct import checkpoint
from covidct.data.units import (
    PrivacyUnit,
)
from covidct.privacy import accounting, ledger
from covidct.privacy.plan import PrivacyPlan, plan_privacy
from covidct.runs import Run, check_new_run, create_run_dir, new_run_id, read_number
from covidct.train_config import TrainConfig
from covidct.training.build import build_model, build_step, public_start, trainable_count
from covidct.training.checks import (
    check_clipping,
    check_model,
    check_same_mechanism,
    check_slices_fit,
    load_splits,
    pipeline_stage_groups,
    unit_basis_warning,
)
from covidct.training.finish import finish
from covidct.training.job import Job, Placement, RunResult
from covidct.training.loop import Loop
from data_prep.errors import CovidCTError

__all__ = ["Placement", "RunResult", "resume", "train"]

logger = logging.getLogger(__name__)


def train(
    prep: Path,
    *,
    config: TrainConfig,
    target_epsilon: float,
    runs_dir: Path,
    run_id: str | None = None,
    resolved_config: dict[str, Any] | None = None,
    progress: bool = False,
    on_event: Callable[[str], None] | None = None,
    placement: Placement | None = None,
) -> RunResult:
    """Train a classifier with patient-level (or slice-level) DP and write ``runs/<run_id>/``.

    Args:
        prep: the prepared dataset.
        config: training settings.
        target_epsilon: the privacy budget; ``math.inf`` trains the same model without DP.
        runs_dir: where run folders go.
        run_id: the run folder's name (default: time, epsilon and a random suffix).
        resolved_config: the whole resolved config, saved with the run.
        progress: show a progress bar.
        on_event: receives one-line messages for the user (device choice, plan).
        placement: one device (default), several local devices, or several workers; with
            several workers every worker runs this with the same arguments, and only worker 0
            writes the run folder, checkpoints and the ledger.
    """
    say = on_event or (lambda msg: logger.info(msg))
    t0 = time.perf_counter()
    if math.isinf(target_epsilon) and config.baseline_learning_rate:
        # unclipped gradients have another scale: the baseline has its own tuned rate
        config = replace(config, learning_rate=config.baseline_learning_rate)
    train_units, val, test = load_splits(prep, config)
    check_clipping(config)
    check_model(config)
    check_slices_fit(config, prep, say)
    start = public_start(config, prep)
    plan = plan_privacy(n_units=len(train_units), config=config, target_epsilon=target_epsilon)
    say(plan.describe(config.learning_rate))
    if plan.dp and config.privacy_unit is PrivacyUnit.PATIENT:
        warning = unit_basis_warning(train_units)
        if warning:
            say(warning)

    device = (placement or Placement()).choose(config, private=plan.dp)  # TensorFlow from here
    pipeline_stage_groups(config, prep)  # a bad stage count fails before the ledger counts the run
    rid = run_id or new_run_id(target_epsilon)
    run = runs_dir / rid
    refusal: CovidCTError | None = None
    if not device.is_chief:
        say(f"worker {device.worker_index}: training only; worker 0 writes the run and ledger")
    else:
        try:
            check_new_run(runs_dir, rid)  # before the ledger records it
            spent = ledger.begin_run(prep, plan.ledger_entry(rid, runs_dir / rid))
        except CovidCTError as exc:
            refusal = exc
    if not device.all_agree(refusal is None):  # the other workers stop with worker 0
        raise refusal or CovidCTError("worker 0 refused to start this run (see its message)")
    if device.is_chief:
        say(f"privacy ledger of {prep}: total spent with this run {_fmt_eps(spent)}")
        run = _open_run(runs_dir, rid, prep, plan, config, target_epsilon, resolved_config)
        say(f"run folder {run} (if interrupted: covidct train --resume {run})")
    job = Job(prep, config, plan, run, rid, train_units, val, test, say, progress, t0, start)
    return _fit(job, device, saved=None, counted=0, stop_at=plan.steps)


def resume(
    run: Path,
    *,
    progress: bool = False,
    on_event: Callable[[str], None] | None = None,
    placement: Placement | None = None,
) -> RunResult:
    """Continue an interrupted run from its last checkpoint (``covidct train --resume RUN``).

    Every step started before the interruption stays counted (``checkpoints/progress.json``),
    so steps run again after the checkpoint are counted twice. When the repeated steps would take
    epsilon over the target, the run takes only the steps that still fit and says so; when none
    fits, it refuses to train further and finishes with the checkpoint's weights. With several
    workers, every worker resumes with the same RUN, which must be readable by all of them
    (shared storage); only worker 0 writes.

    Raises:
        checkpoint.ResumeError: not a resumable run, already finished, or its data changed.
    """
    say = on_event or (lambda msg: logger.info(msg))
    t0 = time.perf_counter()
    saved_plan, config, prep, target_epsilon, rid = _read_plan(run)
    train_units, val, test = load_splits(prep, config)
    plan = plan_privacy(n_units=len(train_units), config=config, target_epsilon=target_epsilon)
    if plan.n_units != saved_plan["n_units"]:
        raise checkpoint.ResumeError(
            f"{prep} now has {plan.n_units} training units, the run started with "
            f"{saved_plan['n_units']}: the prepared data changed, so {run} cannot resume"
        )
    check_same_mechanism(run, saved_plan, plan)
    start = public_start(config, prep)
    counted = checkpoint.steps_counted(run)
    saved = checkpoint.load_state(run)
    next_step = saved.loop.next_step if saved else 0
    remaining = 0 if saved is not None and saved.loop.done else plan.steps - next_step
    allowed = counted + remaining
    if plan.dp:
        allowed = accounting.max_steps_within(
            target_epsilon=target_epsilon,
            noise_multiplier=plan.noise_multiplier,
            sampling_rate=plan.sampling_rate,
            delta=plan.delta,
            upper=allowed,
            accountant=config.accountant,
        )
    take = max(0, min(remaining, allowed - counted))
    say(
        f"resuming run {rid} at step {next_step} of {plan.steps}: {counted} step(s) counted so "
        f"far, {counted - next_step} of them lost after the last checkpoint (they stay counted)"
    )
    if take < remaining:
        say(
            f"to keep epsilon <= the target {target_epsilon:g}, training stops after {take} more "
            f"step(s) (step {next_step + take} of {plan.steps})"
            if take
            else f"refusing to train further: one more step would take epsilon over the target "
            f"{target_epsilon:g}; finishing the run with its last checkpoint's weights"
        )
    device = (placement or Placement()).choose(config, private=plan.dp)  # TensorFlow from here
    refusal: CovidCTError | None = None
    if device.is_chief:
        eps_final = plan.epsilon(counted + take)
        try:
            spent = ledger.resume_run(prep, rid, steps=counted + take, epsilon=eps_final)
            say(f"privacy ledger of {prep}: total spent with this run {_fmt_eps(spent)}")
        except CovidCTError as exc:
            refusal = exc
    if not device.all_agree(refusal is None):  # the other workers stop with worker 0
        raise refusal or CovidCTError("worker 0 refused to resume this run (see its message)")
    job = Job(prep, config, plan, run, rid, train_units, val, test, say, progress, t0, start)
    return _fit(job, device, saved=saved, counted=counted, stop_at=next_step + take)


def _fit(
    job: Job, device: Any, *, saved: checkpoint.SavedState | None, counted: int, stop_at: int
) -> RunResult:
    """Train from ``saved`` (or from scratch) until step ``stop_at``, then finish the run."""
    from covidct.devices import resolve_execution  # imports TensorFlow
    from covidct.privacy.secret import RunSecret

    # the sampling and the noise rest on this key: drawn now from the OS, never written; a
    # resumed attempt draws a new one; every worker gets the chief's over the collective
    secret = RunSecret.draw().shared(device.broadcast_from_chief)
    execution = resolve_execution(job.config.execution, device.kind)
    job.say(f"device {device.describe()}; execution mode {execution.value}")
    store, model = build_model(job, device, saved)
    optimizer, dp = build_step(job, device, model, secret, execution)
    if job.plan.dp:
        job.say(job.plan.noise_to_signal(trainable_count(model)))
    loop = Loop(job, device, model, optimizer, dp, store, secret, counted=counted)
    if saved is not None:
        loop.restore(saved)
    loop.run(stop_at)
    if not device.is_chief:
        job.say(f"worker {device.worker_index} done: worker 0 writes the run")
        seconds = time.perf_counter() - job.t0
        return RunResult(job.run, None, {}, device.describe(), execution.value, seconds, False)
    return finish(job, model, store, device, execution.value, loop.state, loop.counted)


def _open_run(
    runs_dir: Path,
    rid: str,
    prep: Path,
    plan: PrivacyPlan,
    config: TrainConfig,
    target_epsilon: float,
    resolved_config: dict[str, Any] | None,
) -> Path:
    """The run folder, its config and the plan a resume must keep to (chief only)."""
    from covidct.config import to_dict

    run = create_run_dir(runs_dir, rid)
    if resolved_config is not None:
        Run(run).write_config(resolved_config)
    checkpoint.write_plan(
        run,
        {
            "run_id": rid,
            "prep": os.path.abspath(prep),
            "target_epsilon": target_epsilon,
            "n_units": plan.n_units,
            # what the counted steps were taken with: a resume must take the same
            "noise_multiplier": plan.noise_multiplier,
            "sampling_rate": plan.sampling_rate,
            "delta": plan.delta,
            "train": to_dict(config),
        },
    )
    return run


def _read_plan(run: Path) -> tuple[dict[str, Any], TrainConfig, Path, float, str]:
    """A resumable run's saved plan: (the plan, its config, PREP, target epsilon, run id)."""
    from covidct.config import ConfigError, from_dict

    if Run(run).is_finished:
        raise checkpoint.ResumeError(f"{run} is a finished run (has {Run.META}): nothing to resume")
    saved_plan = checkpoint.read_plan(run)
    try:
        config = from_dict(TrainConfig, saved_plan["train"], "train.")
        target_epsilon = float(read_number(saved_plan["target_epsilon"]))  # type: ignore[arg-type]
        return (
            saved_plan,
            config,
            Path(saved_plan["prep"]),
            target_epsilon,
            str(saved_plan["run_id"]),
        )
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise checkpoint.ResumeError(f"{run}: its saved plan is unusable ({exc})") from exc


def _fmt_eps(x: float) -> str:
    return "unbounded (a non-private or slice-level run)" if math.isinf(x) else f"epsilon {x:.3g}"
