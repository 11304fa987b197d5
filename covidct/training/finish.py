"""The end of a run: evaluate, save the model, audit, and write the report, the metrics and
``run.json`` (last: it marks the run finished).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from covidct import checkpoint
from covidct.data.units import PrivacyUnit, Units, image_size, slice_settings
from covidct.evaluate import predict, split_metrics
from covidct.privacy import ledger
from covidct.privacy.audit import audit_model
from covidct.privacy.plan import PrivacyPlan
from covidct.privacy.statements import tf_privacy_statement
from covidct.public_start import PublicStart
from covidct.runs import Run, write_json
from covidct.train_config import TrainConfig
from covidct.training.job import Job, RunResult
from data_prep.prepared import PrepFolder


def finish(
    job: Job,
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
    fspec = save_model(job, model)
    steps_repeated = counted - loop.next_step
    # an early stop ends training sooner, but the planned steps are what the mechanism ran
    accounted = max(counted, loop.committed)
    report = privacy_report(
        plan,
        config,
        job.train_units,
        accounted,
        [h["epsilon"] for h in loop.history],
        steps_repeated=steps_repeated,
        steps_taken_early=counted if counted < accounted else None,
        released=released(job),
        start=job.start,
    )
    if fspec is not None:
        report = replace(report, notes=[*report.notes, standardisation_note(job)])
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
            "features": features_record(job.prep, fspec),
            # data-parallel replicas (all workers); the noise is drawn once per logical batch
            "replicas": device.num_replicas,
            "workers": device.num_workers,
        },
    )
    return RunResult(run, report, metrics, device.describe(), execution, seconds)


def save_model(job: Job, model: Any) -> Any:
    """Save the model on slices (a feature model: the fixed transform in front of the trained
    head); return the transform (None for a model that learns from slices)."""
    from covidct.models import feature_spec

    fspec = feature_spec(job.config.model)
    if fspec is None:
        Run(job.run).save_model(model)
        return None
    from covidct.features.transform import window_of
    from covidct.models import assemble

    settings = slice_settings(job.prep)
    size = image_size(job.prep)
    Run(job.run).save_model(
        assemble(model, image_size=size, spec=fspec, window=window_of(settings))
    )
    return fspec


def features_record(prep: Path, fspec: Any) -> dict[str, Any] | None:
    if fspec is None:
        return None
    from covidct.features.transform import cache_key

    settings = slice_settings(prep)
    return {**fspec.record(settings), "cache_key": cache_key(fspec, settings)}


def fixed(job: Job) -> str:
    from covidct.models import feature_spec

    spec = feature_spec(job.config.model)
    return spec.describe() if spec is not None else "none"


def standardisation_note(job: Job) -> str:
    if job.start is not None and job.start.standardise is not None:
        return (
            f"The model's features are a fixed transform of each slice ({fixed(job)}; no "
            "training data involved). They were standardised with the constants that came with the "
            f"public starting weights ({job.start.weights.name}), estimated on that public "
            "data's features, never on the private training patients'."
        )
    return (
        f"The model's features are a fixed transform of each slice ({fixed(job)}; no training "
        "data involved). Before training they were standardised per channel with the mean and "
        f"variance of the {len(job.val)} validation patients' features, never the private "
        "training patients'. Like the choice of the best epoch and of the threshold, this uses "
        "the validation patients without noise: the guarantee covers the training patients only."
    )


def released(job: Job) -> list[str]:
    """What the run folder, its model card and the ledger publish without noise."""
    n = len(job.train_units)
    return [
        f"the number of training units (N = {n}) and what follows from it (q, sigma, the steps)",
        f"the patients per split (train {len(set(job.train_units.patients))}, validation "
        f"{len(job.val)}, test {len(job.test)}) and per label, in {PrepFolder.REPORT} and the "
        "model card",
        "the training patients' count by identity basis (above)",
        f"the membership audit's figures ({Run.AUDIT}): the model's outputs on training "
        "patients, summarised without noise",
    ]


def privacy_report(
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
    from covidct.privacy.report import PrivacyReport, build_report
    from covidct.privacy.secret import GENERATOR

    passes = steps_taken * plan.sampling_rate  # expected passes over the data: steps * q
    request = plan.request
    slice_units = request.unit is PrivacyUnit.SLICE
    most_per_patient = max_units_per_patient(train_units) if slice_units else None
    epsilon = plan.epsilon(steps_taken)
    report = build_report(
        PrivacyReport(
            dp=plan.dp,
            target_epsilon=plan.target_epsilon if plan.dp else None,
            epsilon=epsilon,
            delta=plan.delta,
            noise_multiplier=plan.noise_multiplier,
            sampling_rate=plan.sampling_rate,
            expected_batch_size=plan.expected_batch_size,
            steps=steps_taken,
            epochs=passes,
            clip_norm=plan.clip_norm or 0.0,
            privacy_unit=request.unit.value,
            # for slice units the report's group-privacy note needs the most slices of one patient
            max_slices_per_unit=most_per_patient or config.max_slices_per_unit,
            n_units=plan.n_units,
            accountant=request.accountant,
            sampling=request.sampling,
            epsilon_per_epoch=eps_per_epoch,
            steps_repeated=steps_repeated,
            steps_taken=steps_taken_early,
            randomness=GENERATOR if plan.dp else "",
            unit_bases=count_bases(train_units),
            released=(released or []) if plan.dp else [],
            tf_privacy_statement=(
                tf_privacy_statement(
                    n_units=plan.n_units,
                    expected_batch_size=plan.expected_batch_size,
                    epochs=passes,
                    noise_multiplier=plan.noise_multiplier,
                    delta=plan.delta,
                    sampling=request.sampling,
                    max_examples_per_user=most_per_patient,
                )
                if plan.dp
                else "not applicable: trained without differential privacy"
            ),
        )
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


def count_bases(units: Units) -> dict[str, int]:
    """Training patients (distinct) by how prepare identified them."""
    basis_of = dict(zip(units.patients, units.bases, strict=False))
    counts: dict[str, int] = {}
    for b in basis_of.values():
        counts[b] = counts.get(b, 0) + 1
    return counts


def max_units_per_patient(units: Units) -> int:
    counts: dict[str, int] = {}
    for p in units.patients:
        counts[p] = counts.get(p, 0) + 1
    return max(counts.values())


def audit_run(run_dir: Path) -> dict[str, Any]:
    """Re-run the audit of a finished run (``covidct audit RUN``); rewrites audit.json and the
    privacy report. The prepared dataset must still be where the run recorded it."""
    from covidct.data.units import DataError, SliceStore, load_units
    from covidct.privacy.report import read_report, write_report

    run = Run(run_dir)
    if not run.is_finished:
        raise DataError(f"{run_dir} is not a finished run (no {Run.META}): train it first")
    meta = run.meta()
    prep = Path(meta["prep"])
    unit = PrivacyUnit(meta.get("privacy_unit", PrivacyUnit.PATIENT.value))
    train_units = load_units(prep, "train", unit)
    store = SliceStore(prep)
    model = run.load_model()
    held_out = [
        predict(model, load_units(prep, split, PrivacyUnit.PATIENT), store)
        for split in ("validation", "test")
    ]
    report = read_report(run_dir)
    audit = audit_model(model, train_units, store, held_out, report)
    run.write_json(Run.AUDIT, audit)
    write_report(replace(report, audit=audit), run_dir)
    return audit
