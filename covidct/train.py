"""``covidct train``: NanoBatch DP-SGD on a prepared dataset, writing a complete run folder.

Privacy arithmetic (delta, q, steps, sigma) is settled and validated before TensorFlow builds
anything, so an unsatisfiable request fails in a second with a clear message.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from covidct import checkpoint
from covidct.data.units import (
    DataError,
    PoissonSampler,
    PrivacyUnit,
    ShuffledSampler,
    SliceStore,
    Units,
    image_size,
    load_units,
    slice_settings,
)
from covidct.distributed import replica_chunks, store_loader
from covidct.ema import Ema
from covidct.evaluate import auc_or_nan, predict, split_metrics
from covidct.pretrain import PublicStart, load_start
from covidct.privacy import accounting, ledger
from covidct.privacy.accounting import Sampling
from covidct.privacy.audit import audit_model
from covidct.privacy.modes import ExecutionMode, PerLayerSplit
from covidct.privacy.plan import PrivacyPlan, plan_privacy
from covidct.privacy.statements import tf_privacy_statement
from covidct.runs import Run, check_new_run, create_run_dir, new_run_id, write_json
from covidct.train_config import OptimizerName, TrainConfig
from data_prep.errors import CovidCTError

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    privacy: Any  # covidct.privacy.report.PrivacyReport (None on a worker other than 0)
    metrics: dict[str, Any]
    device: str
    execution: str
    seconds: float
    chief: bool = True  # False: a worker that only trained (worker 0 wrote the run)


@dataclass(frozen=True)
class Placement:
    """Where training runs: one device (default), several local ones, or several workers.

    Attributes:
        local_devices: replicas on this machine (MirroredStrategy over that many GPUs, or
            logical CPU devices); 0 = every GPU; ignored with several workers.
        workers: "host:port,host:port" (MultiWorkerMirroredStrategy); None: TF_CONFIG if set.
        worker_index: this process's index in ``workers`` (0 is the chief, which writes the run).
    """

    local_devices: int = 1
    workers: str | None = None
    worker_index: int | None = None

    def choose(self, config: TrainConfig, *, private: bool = True) -> Any:
        """The DeviceChoice; call before any other TensorFlow op of the process."""
        from covidct.config import ConfigError
        from covidct.devices import choose_device

        try:
            return choose_device(
                prefer=config.device,
                local_devices=self.local_devices,
                workers=self.workers,
                worker_index=self.worker_index,
                ipus=_pipeline_ipus(config) if private else 1,
            )
        except ValueError as exc:
            raise ConfigError(f"cannot place training: {exc}") from exc


@dataclass
class _Job:
    """Everything a training attempt needs, whether it starts a run or resumes one."""

    prep: Path
    config: TrainConfig
    plan: PrivacyPlan
    run: Path
    run_id: str
    train_units: Units
    val: Units
    test: Units
    say: Callable[[str], None]
    progress: bool
    t0: float
    start: PublicStart | None = None  # public starting weights (train.initial_weights)


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
    from covidct.config import to_dict

    say = on_event or (lambda msg: logger.info(msg))
    t0 = time.perf_counter()
    if math.isinf(target_epsilon) and config.baseline_learning_rate:
        # unclipped gradients have another scale: the baseline has its own tuned rate
        config = replace(config, learning_rate=config.baseline_learning_rate)
    train_units, val, test = _load_splits(prep, config)
    _check_clipping(config)
    _check_model(config)
    _check_slices_fit(config, prep, say)
    start = _public_start(config, prep)
    plan = plan_privacy(n_units=len(train_units), config=config, target_epsilon=target_epsilon)
    say(plan.describe(config.learning_rate))
    if plan.dp and config.privacy_unit is PrivacyUnit.PATIENT:
        warning = _unit_basis_warning(train_units)
        if warning:
            say(warning)

    device = (placement or Placement()).choose(config, private=plan.dp)  # TensorFlow from here
    _stage_groups(config, prep)  # a bad stage count fails before the ledger counts the run
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
        run = create_run_dir(runs_dir, rid)
        say(f"run folder {run} (if interrupted: covidct train --resume {run})")
        if resolved_config is not None:
            Run(run).write_config(resolved_config)
        checkpoint.write_plan(
            run,
            {
                "run_id": rid,
                "prep": os.path.abspath(prep),
                "target_epsilon": "inf" if math.isinf(target_epsilon) else target_epsilon,
                "n_units": plan.n_units,
                # what the counted steps were taken with: a resume must take the same
                "noise_multiplier": plan.noise_multiplier,
                "sampling_rate": plan.sampling_rate,
                "delta": plan.delta,
                "train": to_dict(config),
            },
        )
    job = _Job(prep, config, plan, run, rid, train_units, val, test, say, progress, t0, start)
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
    from covidct.config import ConfigError, from_dict

    say = on_event or (lambda msg: logger.info(msg))
    t0 = time.perf_counter()
    if Run(run).is_finished:
        raise checkpoint.ResumeError(f"{run} is a finished run (has run.json): nothing to resume")
    saved_plan = checkpoint.read_plan(run)
    try:
        config = from_dict(TrainConfig, saved_plan["train"], "train.")
        prep = Path(saved_plan["prep"])
        raw_eps = saved_plan["target_epsilon"]
        target_epsilon = math.inf if raw_eps == "inf" else float(raw_eps)
        rid = str(saved_plan["run_id"])
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise checkpoint.ResumeError(f"{run}: its saved plan is unusable ({exc})") from exc
    train_units, val, test = _load_splits(prep, config)
    plan = plan_privacy(n_units=len(train_units), config=config, target_epsilon=target_epsilon)
    if plan.n_units != saved_plan["n_units"]:
        raise checkpoint.ResumeError(
            f"{prep} now has {plan.n_units} training units, the run started with "
            f"{saved_plan['n_units']}: the prepared data changed, so {run} cannot resume"
        )
    _check_same_mechanism(run, saved_plan, plan)
    start = _public_start(config, prep)
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
    job = _Job(prep, config, plan, run, rid, train_units, val, test, say, progress, t0, start)
    return _fit(job, device, saved=saved, counted=counted, stop_at=next_step + take)


def _check_same_mechanism(run: Path, saved: dict[str, Any], plan: PrivacyPlan) -> None:
    """A resume must add steps of the mechanism the counted steps were taken with."""
    for key, now in (
        ("noise_multiplier", plan.noise_multiplier),
        ("sampling_rate", plan.sampling_rate),
        ("delta", plan.delta),
    ):
        if key not in saved:
            continue  # a plan written before covidct stored it
        before = float(saved[key])
        if not math.isclose(before, now, rel_tol=1e-9, abs_tol=1e-12):
            raise checkpoint.ResumeError(
                f"{run} was trained with {key} {before:.6g}; resuming now would use {now:.6g} "
                "(the accounting library or the prepared data changed), and its steps would "
                "not compose as counted. Refusing to resume: start a new run with covidct train."
            )


def _unit_basis_warning(units: Units) -> str | None:
    """Before training: say when the "patients" are not known to be persons."""
    from data_prep.deid import UnitBasis

    persons = sum(1 for b in units.bases if b == UnitBasis.DICOM_PATIENT_ID.value)
    if not units.bases or persons == len(units):
        return None
    kinds = sorted({UnitBasis(b).covers for b in units.bases if b in UnitBasis._value2member_map_})
    head = (
        f"warning: none of the {len(units)} training units is identified by a DICOM PatientID"
        if persons == 0
        else f"warning: {len(units) - persons} of the {len(units)} training units are not "
        "identified by a DICOM PatientID"
    )
    return (
        f"{head} ({'; '.join(k for k in kinds if not k.startswith('a patient'))}): "
        "--privacy-unit patient then protects each such unit, not necessarily the person "
        "(the report says so). Prepare DICOM with PatientID, or one folder per patient."
    )


def _check_clipping(config: TrainConfig) -> None:
    from covidct.config import ConfigError
    from covidct.privacy.modes import ClippingMode

    if config.pipeline_stages < 0:
        raise ConfigError(f"train.pipeline_stages must be >= 0, got {config.pipeline_stages}")
    if config.pipeline_stages and config.clipping is not ClippingMode.PER_LAYER:
        raise ConfigError(
            "train.pipeline_stages clips each stage on its own, which is per-layer clipping: "
            "add --clipping per-layer (or set train.pipeline_stages: 0)"
        )


def _check_slices_fit(config: TrainConfig, prep: Path, say: Callable[[str], None]) -> None:
    from covidct.features.cache import check_slices
    from covidct.models import feature_spec

    spec = feature_spec(config.model)
    note = check_slices(spec, prep, config.model) if spec is not None else None
    if note:
        say(note)


def _check_model(config: TrainConfig) -> None:
    """Settings that a model on fixed features cannot honour fail before anything is counted."""
    from covidct.config import ConfigError
    from covidct.models import feature_spec

    if not 0.0 <= config.ema < 1.0:
        raise ConfigError(f"train.ema must be in [0, 1), got {config.ema}")
    if config.augment_views < 1:
        raise ConfigError(f"train.augment_views must be 1 or more, got {config.augment_views}")
    if config.augment_views > 1 and not config.augment:
        raise ConfigError(
            f"train.augment_views={config.augment_views} averages augmented views of each slice, "
            "but train.augment is off, so every view would be the same slice: set "
            "train.augment true, or train.augment_views 1"
        )
    if feature_spec(config.model) is None:
        return
    cnn = "or choose a CNN that learns from slices (--set train.model=gn_cnn_small)"
    if config.augment:
        raise ConfigError(
            f"train.augment flips and shifts slices, but model {config.model!r} trains on cached "
            f"features of the unaugmented slices: set train.augment false, {cnn}"
        )
    if config.pipeline_stages:
        raise ConfigError(
            f"train.pipeline_stages splits a deep model across IPUs; {config.model!r} trains one "
            f"small layer: set train.pipeline_stages 0, {cnn}"
        )


def _pipeline_ipus(config: TrainConfig) -> int:
    """IPUs to select for a private run: one per pipeline stage with per-stage clipping
    (``covidct.ipu.pipeline`` maps stage s to IPU s), else 1. Non-private runs take one."""
    from covidct.privacy.modes import ClippingMode

    if config.clipping is ClippingMode.PER_LAYER and config.pipeline_stages > 1:
        return config.pipeline_stages
    return 1


def _stage_groups(config: TrainConfig, prep: Path, model: Any = None) -> list[list[int]] | None:
    """Per-stage clipping groups (None unless train.pipeline_stages is set)."""
    if not config.pipeline_stages:
        return None
    from covidct.config import ConfigError
    from covidct.privacy.stages import StageError, stage_groups

    if model is None:
        from covidct.models import build_model

        model = build_model(config.model, input_size=image_size(prep), seed=config.seed)
    try:
        return stage_groups(model, config.pipeline_stages)
    except StageError as exc:
        raise ConfigError(f"train.pipeline_stages: {exc}") from exc


def _load_splits(prep: Path, config: TrainConfig) -> tuple[Units, Units, Units]:
    train_units = load_units(prep, "train", config.privacy_unit)
    val = load_units(prep, "validation", PrivacyUnit.PATIENT)
    test = load_units(prep, "test", PrivacyUnit.PATIENT)
    for name, units in (("train", train_units), ("validation", val), ("test", test)):
        if len(units) == 0:
            raise DataError(f"the {name} split of {prep} is empty: prepare more patients")
    return train_units, val, test


def _slice_rng(seed: int, step: int) -> np.random.Generator:
    """Which k slices each sampled patient contributes at ``step``: a pure function of
    (seed, step), so a resumed run draws what the uninterrupted run would have drawn."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7, step)))


def _fit(
    job: _Job, device: Any, *, saved: checkpoint.SavedState | None, counted: int, stop_at: int
) -> RunResult:
    """Train from ``saved`` (or from scratch) until step ``stop_at``, then finish the run."""
    from covidct.devices import resolve_execution  # imports TensorFlow
    from covidct.privacy.secret import RunSecret

    # the sampling and the noise rest on this key: drawn now from the OS, never written; a
    # resumed attempt draws a new one; every worker gets the chief's over the collective
    secret = RunSecret.draw().shared(device.broadcast_from_chief)
    execution = resolve_execution(job.config.execution, device.kind)
    job.say(f"device {device.describe()}; execution mode {execution.value}")
    store, model = _build_model(job, device, saved)
    optimizer, dp = _build_step(job, device, model, secret, execution)
    if job.plan.dp:
        job.say(job.plan.noise_to_signal(_trainable_count(model)))
    loop = _Loop(job, device, model, optimizer, dp, store, secret, counted=counted)
    if saved is not None:
        loop.restore(saved)
    loop.run(stop_at)
    if not device.is_chief:
        job.say(f"worker {device.worker_index} done: worker 0 writes the run")
        seconds = time.perf_counter() - job.t0
        return RunResult(job.run, None, {}, device.describe(), execution.value, seconds, False)
    return _finish(job, model, store, device, execution.value, loop.state, loop.counted)


def _build_model(job: _Job, device: Any, saved: checkpoint.SavedState | None) -> tuple[Any, Any]:
    """What the model reads (slices, or cached features) and the model, on the device."""
    from covidct.models import build_head, build_model, feature_spec, validate_model

    config = job.config
    fspec = feature_spec(config.model)
    store: Any = SliceStore(job.prep)
    if fspec is not None:
        from covidct.features.cache import training_features

        store, mean, variance = training_features(
            job.prep, fspec, [job.train_units, job.val, job.test], job.val, say=job.say
        )
        public = job.start.standardise if job.start is not None else None
        if public is not None:  # the pretrained head's own constants (public statistics)
            mean, variance = public
    with device.strategy.scope():
        if fspec is not None:
            model = build_head(config.model, mean=mean, variance=variance)
        else:
            model = build_model(config.model, input_size=image_size(job.prep), seed=config.seed)
        validate_model(model)
        if job.start is not None and saved is None:
            _load_initial_weights(model, job.start.weights)
    return store, model


def _build_step(
    job: _Job, device: Any, model: Any, secret: Any, execution: ExecutionMode
) -> tuple[Any, Any]:
    """The optimizer and the DP step that executes the plan (``mechanism.DPStep``)."""
    from covidct.privacy.mechanism import DPGradient, DPSettings, DPStep
    from covidct.tfsetup import keras

    config, plan, say = job.config, job.plan, job.say
    with device.strategy.scope():
        optimizer = _optimizer(config, keras)
        optimizer.build(model.trainable_variables)  # its slots exist, so a checkpoint holds them
        groups = _stage_groups(config, job.prep, model)
        settings = DPSettings(
            clip_norm=plan.clip_norm,
            noise_multiplier=plan.noise_multiplier,
            expected_batch_size=plan.expected_batch_size,
            clipping=config.clipping,
            proportional_split=config.per_layer_split is PerLayerSplit.PROPORTIONAL,
        )
        dp: DPStep
        if groups is not None and device.kind == "ipu" and len(groups) > 1 and plan.dp:
            from covidct.ipu.pipeline import PipelinedDPGradient

            say(
                f"per-stage clipping: {len(groups)} stages pipelined over {len(groups)} IPUs "
                "(stage s on IPU s), each clipped on its own"
            )
            dp = PipelinedDPGradient(
                model,
                settings=settings,
                secret=secret,
                groups=groups,
                unit_loss=config.unit_loss,
                runner=device.run,
            )
        else:
            if groups is not None:
                say(
                    f"per-stage clipping: {len(groups)} stage(s) of consecutive layers, each "
                    "clipped on its own"
                )
            dp = DPGradient(
                model,
                settings=settings,
                mode=execution,
                secret=secret,
                layer_groups=groups,
                unit_loss=config.unit_loss,
                jit_compile=device.jit_compile,
                runner=device.run,
            )
    return optimizer, dp


class _Loop:
    """The training loop and all its state, explicit: the weights and the optimizer, the
    best-so-far weights, the EMA, the steps counted for the accountant, and ``state`` (the
    checkpointed ``LoopState``: next step, history, early stopping)."""

    def __init__(
        self,
        job: _Job,
        device: Any,
        model: Any,
        optimizer: Any,
        dp: Any,
        store: Any,
        secret: Any,
        *,
        counted: int,
    ) -> None:
        config, plan = job.config, job.plan
        self.job, self.device, self.model = job, device, model
        self.optimizer, self.dp = optimizer, dp
        self.store = store
        self.counted = counted  # every started step, for the accountant
        self.state = checkpoint.LoopState()
        self.best_weights = model.get_weights()
        # the exponential moving average of the weights (De et al. 2022): post-processing of
        # the noisy iterates, so it costs no privacy; validation, the best epoch and the saved
        # model use it
        self.ema = Ema(config.ema, model.get_weights())
        self.sampler: PoissonSampler | ShuffledSampler = (
            PoissonSampler(len(job.train_units), sampling_rate=plan.sampling_rate, secret=secret)
            if config.sampling is Sampling.POISSON
            else ShuffledSampler(len(job.train_units), batch_size=config.batch_size, secret=secret)
        )
        self.planned_eps = plan.epsilon_per_epoch()

    def restore(self, saved: checkpoint.SavedState) -> None:
        self.model.set_weights(saved.weights)
        for var, value in zip(self.optimizer.variables, saved.optimizer, strict=True):
            var.assign(value)
        self.ema.restore(saved.ema, self.model.get_weights())
        self.best_weights, self.state = saved.best_weights, saved.loop
        self.state.attempts += 1

    def run(self, stop_at: int) -> None:
        """Steps until ``stop_at`` (or an early stop); then the weights to save are in place."""
        job, state, config = self.job, self.state, self.job.config
        first, spe = state.next_step, job.plan.steps_per_epoch
        if not state.done:  # what this attempt sets out to take counts, even if it stops early
            state.committed = self.counted + (stop_at - first)
        bar = _bar(job.plan.steps, job.progress, initial=first)
        # reading the sums is a collective across workers: the loss display is one process's
        show_loss = bar is not None and self.device.num_workers == 1
        losses: list[float] = []
        step = first
        while step < stop_at and not state.done:
            loss = self.step(step, read_loss=show_loss)
            if loss is not None:
                losses.append(loss)
            step += 1
            state.next_step = step
            if bar is not None:
                bar.update(1)
                # the training loss is computed on private data without noise: console only,
                # never written to the run (it is not covered by the guarantee)
                last_eps = state.history[-1]["epsilon"] if state.history else 0.0
                mean = sum(losses) / max(len(losses), 1)
                bar.set_postfix(loss=f"{mean:.3f}", eps=f"{last_eps:.2f}")
            if step % spe == 0:
                self.end_epoch(step // spe)
                losses = []
                self.save_checkpoint()
            elif config.checkpoint_every and (step - first) % config.checkpoint_every == 0:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if step % spe and not state.done:  # stopped inside an epoch (a resume stopped early)
            self.end_epoch(len(state.history) + 1)
        state.done = True
        self.save_checkpoint()  # a crash while finishing resumes straight to finishing
        if config.restore_best:
            self.model.set_weights(self.best_weights)
        else:
            self.ema.swap_in(self.model)  # the last epoch's averaged weights

    def step(self, step: int, *, read_loss: bool) -> float | None:
        """One noisy update on the sample of ``step``."""
        job, config, device = self.job, self.job.config, self.device
        # counted BEFORE the noisy update exists: a crash from here on leaves the step counted
        self.counted += 1
        if device.is_chief:
            checkpoint.count_step(job.run, self.counted)
        chosen = self.sampler.sample(step)  # the same global sample on every worker
        load, shape = store_loader(
            job.train_units,
            chosen,
            self.store,
            k=config.max_slices_per_unit,
            rng=_slice_rng(config.seed, step),
            augment=config.augment,
            views=config.augment_views,
        )
        rounds = replica_chunks(
            chosen,
            load,
            chunk=config.chunk_units,
            num_replicas=device.num_replicas,
            replica_ids=device.replica_ids,
            shape=shape,
        )
        loss = self.dp.run_batch(rounds, self.optimizer, step=step, read_loss=read_loss)
        self.ema.update(self.model)
        return loss  # type: ignore[no-any-return]

    def end_epoch(self, epoch: int) -> None:
        """Validate after ``epoch`` (1-based), keep the best weights, decide early stopping."""
        job, config, state, plan = self.job, self.job.config, self.state, self.job.plan
        live = self.ema.swap_in(self.model)
        val_pred = predict(self.model, job.val, self.store)
        _, v_labels, v_scores = val_pred.by_patient(config.patient_score)
        val_auc = auc_or_nan(v_labels, v_scores)
        # epsilon over every step counted so far (repeated steps included)
        eps = (
            self.planned_eps[epoch - 1]
            if self.counted == epoch * plan.steps_per_epoch and epoch <= len(self.planned_eps)
            else plan.epsilon(self.counted)
        )
        state.history.append(
            {
                "epoch": epoch,
                "steps": self.counted,
                "epsilon": eps,
                "validation_patient_auc": val_auc,
            }
        )
        every = max(1, config.epochs // 20)  # at most ~20 lines (full batch: an epoch = a step)
        if epoch % every == 0 or epoch in (1, config.epochs):
            job.say(
                f"epoch {epoch}/{config.epochs}: epsilon spent {eps:.3f}, "
                f"validation patient AUC {val_auc:.3f}"
            )
        if not (val_auc <= state.best_auc):  # NaN-safe: a NaN AUC never counts as improvement
            state.best_auc, self.best_weights, state.bad_epochs = (
                val_auc,
                self.model.get_weights(),
                0,
            )
        else:
            state.bad_epochs += 1
            patience = config.early_stopping_patience
            if patience and state.bad_epochs >= patience:
                job.say(
                    f"early stop after epoch {epoch}: no validation improvement (epsilon still "
                    "counts every planned step: the stopping rule is not part of the mechanism)"
                )
                state.done = True
        self.ema.swap_out(self.model, live)

    def save_checkpoint(self) -> None:
        if not self.device.is_chief:
            return
        checkpoint.save_state(
            self.job.run,
            weights=self.model.get_weights(),
            optimizer=[v.numpy() for v in self.optimizer.variables],
            best_weights=self.best_weights,
            loop=self.state,
            ema=self.ema.state(),
        )


def _finish(
    job: _Job,
    model: Any,
    store: Any,
    device: Any,
    execution: str,
    loop: checkpoint.LoopState,
    counted: int,
) -> RunResult:
    """Evaluate, audit and write the run's files; run.json last (it marks the run finished)."""
    from covidct.privacy.report import write_report

    config, plan, run, say = job.config, job.plan, job.run, job.say
    val_pred = predict(model, job.val, store)
    test_pred = predict(model, job.test, store)
    metrics = split_metrics(test_pred, val_pred, config.patient_score)
    metrics["validation_patient_auc_best"] = loop.best_auc
    from covidct.models import feature_spec

    fspec = feature_spec(config.model)
    if fspec is not None:
        from covidct.features.transform import window_of
        from covidct.models import assemble

        # the saved model takes slices: the fixed transform in front of the trained head

        saved = assemble(
            model,
            image_size=image_size(job.prep),
            spec=fspec,
            window=window_of(slice_settings(job.prep)),
        )
        Run(run).save_model(saved)
    else:
        Run(run).save_model(model)

    steps_repeated = counted - loop.next_step
    # an early stop ends training sooner, but the planned steps are what the mechanism ran
    accounted = max(counted, loop.committed)
    report = _privacy_report(
        plan,
        config,
        job.train_units,
        accounted,
        [h["epsilon"] for h in loop.history],
        steps_repeated=steps_repeated,
        steps_taken_early=counted if counted < accounted else None,
        released=_released(job),
        start=job.start,
    )
    if fspec is not None:
        report = replace(report, notes=[*report.notes, _standardisation_note(job)])
    say("auditing: membership inference on training vs held-out patients")
    audit = audit_model(model, job.train_units, store, [val_pred, test_pred], report)
    write_json(run, Run.AUDIT, audit)
    report = replace(report, audit=audit)
    write_report(report, run)
    ledger.finish_run(job.prep, job.run_id, steps=accounted, epsilon=report.epsilon)
    say(audit["reading"])
    write_json(run, Run.METRICS, metrics)
    write_json(run, Run.HISTORY, loop.history)
    seconds = time.perf_counter() - job.t0
    write_json(
        run,
        Run.META,
        {
            "prep": os.path.abspath(job.prep),
            "device": device.describe(),
            "execution": execution,
            "model": config.model,
            "privacy_unit": config.privacy_unit.value,
            "image_size": image_size(job.prep),
            # how slices were made: inference (the dashboard) must prepare scans the same way
            "slice_settings": slice_settings(job.prep),
            "seconds": round(seconds, 1),
            "steps": counted,
            "steps_accounted": accounted,
            "steps_repeated": steps_repeated,
            "attempts": loop.attempts,
            # public starting weights: their SHA-256 and the public manifest's
            "initial_weights": job.start.record() if job.start is not None else None,
            # a model on fixed features: what the transform was (the saved model contains it)
            "features": _features_record(job.prep, fspec),
            # data-parallel replicas (all workers); the noise is drawn once per logical batch
            "replicas": device.num_replicas,
            "workers": device.num_workers,
        },
    )
    return RunResult(run, report, metrics, device.describe(), execution, seconds)


def _features_record(prep: Path, fspec: Any) -> dict[str, Any] | None:
    if fspec is None:
        return None
    from covidct.features.transform import cache_key

    settings = slice_settings(prep)
    return {**fspec.record(settings), "cache_key": cache_key(fspec, settings)}


def _fixed(job: _Job) -> str:
    from covidct.models import feature_spec

    spec = feature_spec(job.config.model)
    return spec.describe() if spec is not None else "none"


def _standardisation_note(job: _Job) -> str:
    if job.start is not None and job.start.standardise is not None:
        return (
            f"The model's features are a fixed transform of each slice ({_fixed(job)}; no "
            "training data involved). They were standardised with the constants that came with the "
            f"public starting weights ({job.start.weights.name}), estimated on that public "
            "data's features, never on the private training patients'."
        )
    return (
        f"The model's features are a fixed transform of each slice ({_fixed(job)}; no training "
        "data involved). Before training they were standardised per channel with the mean and "
        f"variance of the {len(job.val)} validation patients' features, never the private "
        "training patients'. Like the choice of the best epoch and of the threshold, this uses "
        "the validation patients without noise: the guarantee covers the training patients only."
    )


def _trainable_count(model: Any) -> int:
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))


def _privacy_report(
    plan: PrivacyPlan,
    config: TrainConfig,
    train_units: Units,
    steps_taken: int,
    eps_per_epoch: list[float],
    *,
    steps_repeated: int = 0,
    steps_taken_early: int | None = None,
    released: list[str] | None = None,
    start: PublicStart | None = None,
) -> Any:
    """The epsilon report for the steps counted (every started step; after an early stop,
    every planned step)."""
    from covidct.privacy.report import build_report
    from covidct.privacy.secret import GENERATOR

    passes = steps_taken * plan.sampling_rate  # expected passes over the data: steps * q
    slice_units = config.privacy_unit is PrivacyUnit.SLICE
    most_per_patient = _max_units_per_patient(train_units) if slice_units else None
    epsilon = plan.epsilon(steps_taken)
    report = build_report(
        dp=plan.dp,
        target_epsilon=plan.target_epsilon if plan.dp else None,
        epsilon=epsilon,
        delta=plan.delta,
        noise_multiplier=plan.noise_multiplier,
        sampling_rate=plan.sampling_rate,
        expected_batch_size=plan.expected_batch_size,
        steps=steps_taken,
        epochs=passes,
        clip_norm=config.clip_norm if plan.dp else 0.0,
        privacy_unit=config.privacy_unit.value,
        # for slice units the report's group-privacy note needs the most slices of one patient
        max_slices_per_unit=most_per_patient or config.max_slices_per_unit,
        n_units=plan.n_units,
        accountant=config.accountant,
        sampling=config.sampling,
        epsilon_per_epoch=eps_per_epoch,
        steps_repeated=steps_repeated,
        steps_taken=steps_taken_early,
        randomness=GENERATOR if plan.dp else "",
        unit_bases=_count_bases(train_units),
        released=released if plan.dp else [],
        tf_privacy_statement=(
            tf_privacy_statement(
                n_units=plan.n_units,
                expected_batch_size=plan.expected_batch_size,
                epochs=passes,
                noise_multiplier=plan.noise_multiplier,
                delta=plan.delta,
                sampling=config.sampling,
                max_examples_per_user=most_per_patient,
            )
            if plan.dp
            else "not applicable: trained without differential privacy"
        ),
    )
    if config.augment_views > 1 and plan.dp:
        note = (
            f"Augmentation multiplicity: each training slice was seen in {config.augment_views} "
            "flipped/shifted views per step, averaged inside its unit before the unit's gradient "
            "was clipped; the unit is clipped once, so the views do not change the guarantee."
        )
        report = replace(report, notes=[*report.notes, note])
    if start is not None:
        report = replace(report, notes=[*report.notes, start.note()])
    return report


def _count_bases(units: Units) -> dict[str, int]:
    """Training patients (distinct) by how prepare identified them."""
    basis_of = dict(zip(units.patients, units.bases, strict=False))
    counts: dict[str, int] = {}
    for b in basis_of.values():
        counts[b] = counts.get(b, 0) + 1
    return counts


def _released(job: _Job) -> list[str]:
    """What the run folder, its model card and the ledger publish without noise."""
    n = len(job.train_units)
    return [
        f"the number of training units (N = {n}) and what follows from it (q, sigma, the steps)",
        f"the patients per split (train {len(set(job.train_units.patients))}, validation "
        f"{len(job.val)}, test {len(job.test)}) and per label, in prep_report.json and the "
        "model card",
        "the training patients' count by identity basis (above)",
        "the membership audit's figures (audit.json): the model's outputs on training "
        "patients, summarised without noise",
    ]


def _fmt_eps(x: float) -> str:
    return "unbounded (a non-private or slice-level run)" if math.isinf(x) else f"epsilon {x:.3g}"


def _max_units_per_patient(units: Units) -> int:
    counts: dict[str, int] = {}
    for p in units.patients:
        counts[p] = counts.get(p, 0) + 1
    return max(counts.values())


def _optimizer(config: TrainConfig, keras: Any) -> Any:
    if config.optimizer is OptimizerName.ADAM:
        return keras.optimizers.Adam(learning_rate=config.learning_rate)
    momentum = config.momentum if config.optimizer is OptimizerName.MOMENTUM else 0.0
    return keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=momentum)


def _public_start(config: TrainConfig, prep: Path) -> PublicStart | None:
    """train.initial_weights checked against its provenance and ``prep`` (before anything is
    counted), or None."""
    if not config.initial_weights:
        return None
    return load_start(Path(config.initial_weights), config=config, prep=prep)


def _load_initial_weights(model: Any, path: Path) -> None:
    if not path.exists():
        raise DataError(f"initial weights {path} not found")
    try:
        model.load_weights(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot load initial weights from {path} into {model.name}: {exc} "
            "(the file must come from the same architecture and input size)"
        ) from exc


def _bar(total: int, enabled: bool, *, initial: int = 0) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="step")
