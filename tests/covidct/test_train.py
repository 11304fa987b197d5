"""End to end: synth -> prepare -> train (tiny) writes a complete, honest run folder."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import dp_accounting
import numpy as np
import pytest

from covidct.cli import main
from covidct.data.units import DataError
from covidct.evaluate import PatientScore
from covidct.privacy.accounting import PrivacyRequestError
from covidct.privacy.modes import UnitLoss
from covidct.privacy.plan import plan_privacy
from covidct.train import train
from covidct.train_config import OptimizerName, TrainConfig

# the CNN recipe (configs/cnn.yaml) at toy scale: these tests cover the trainer on slices;
# tests/covidct/models/test_fixed.py covers the default feature model
TINY = TrainConfig(
    model="gn_cnn_small",
    epochs=2,
    batch_size=8,
    max_slices_per_unit=2,
    chunk_units=8,
    learning_rate=0.05,
    baseline_learning_rate=0.01,  # as configs/cnn.yaml
    seed=1,
    ema=0.0,
    unit_loss=UnitLoss.MEAN,
    patient_score=PatientScore.MEAN,
)


@pytest.fixture(scope="module")
def dp_run(prep: Path, tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("runs")
    return train(prep, config=TINY, target_epsilon=3.0, runs_dir=runs, run_id="r1")


def test_run_folder_is_complete(dp_run):
    run = dp_run.run_dir
    for name in [
        "model.keras",
        "privacy_report.json",
        "privacy_report.md",
        "metrics.json",
        "history.json",
        "run.json",
        "audit.json",
        "checkpoints/state.npz",
        "checkpoints/plan.json",
        "checkpoints/progress.json",
    ]:
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for level in ("patient", "slice"):
        m = metrics[level]
        assert {
            "auc",
            "accuracy",
            "sensitivity",
            "specificity",
            "confusion_matrix",
            "threshold",
        } <= set(m)
    assert metrics["threshold_chosen_on"] == "validation"


def test_saved_model_loads_without_covidct_code(dp_run, prep):
    from covidct.tfsetup import keras

    model = keras.models.load_model(dp_run.run_dir / "model.keras", compile=False)
    x = np.zeros((2, 32, 32, 1), np.float32)
    assert model(x).shape == (2, 1)


def test_reported_epsilon_matches_an_independent_dp_accounting_computation(dp_run):
    r = json.loads((dp_run.run_dir / "privacy_report.json").read_text())
    for key in [
        "epsilon",
        "delta",
        "noise_multiplier",
        "sampling_rate",
        "steps",
        "clip_norm",
        "privacy_unit",
        "accountant",
        "sampling",
        "epsilon_per_epoch",
        "tf_privacy_statement",
    ]:
        assert key in r, key
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            r["sampling_rate"], dp_accounting.GaussianDpEvent(r["noise_multiplier"])
        ),
        r["steps"],
    )
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(event)
    assert r["epsilon"] == pytest.approx(acc.get_epsilon(r["delta"]), rel=1e-6)
    assert r["epsilon"] <= 3.0
    assert r["privacy_unit"] == "patient" and r["sampling"] == "poisson"
    assert r["delta"] < 1 / 28  # below 1/N (28 training patients)


def test_history_holds_no_training_loss(dp_run):
    # the training loss is computed on private data without noise: not part of the release
    history = json.loads((dp_run.run_dir / "history.json").read_text())
    assert history and all("loss" not in k for row in history for k in row if "validation" not in k)


def test_no_dp_baseline_trains_the_same_model_and_says_so(prep, tmp_path):
    res = train(prep, config=TINY, target_epsilon=math.inf, runs_dir=tmp_path, run_id="base")
    r = json.loads((res.run_dir / "privacy_report.json").read_text())
    assert r["dp"] is False and r["epsilon"] == "inf"
    assert "no privacy guarantee" in (res.run_dir / "privacy_report.md").read_text().lower()


def test_unsatisfiable_requests_fail_before_training():
    with pytest.raises(PrivacyRequestError):
        plan_privacy(n_units=100, config=replace(TINY, delta=0.5), target_epsilon=3.0)
    with pytest.raises(PrivacyRequestError):
        plan_privacy(n_units=100, config=replace(TINY, batch_size=500), target_epsilon=3.0)
    with pytest.raises(PrivacyRequestError):
        plan_privacy(n_units=100, config=TINY, target_epsilon=1e-4)  # needs absurd noise


def test_cli_rejects_bad_epsilon_with_a_message(prep, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", str(prep), "--epsilon", "0"])
    assert "epsilon must be > 0" in capsys.readouterr().err
    code = main(
        [
            "train",
            "--data",
            str(prep),
            "--epsilon",
            "3",
            "--set",
            "train.delta=0.9",
            "--runs",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "delta" in capsys.readouterr().err


def test_slice_unit_run_reports_what_it_does_not_cover(prep, tmp_path):
    from covidct.data.units import PrivacyUnit

    cfg = replace(TINY, privacy_unit=PrivacyUnit.SLICE, epochs=1, batch_size=16)
    res = train(prep, config=cfg, target_epsilon=8.0, runs_dir=tmp_path, run_id="slice")
    r = json.loads((res.run_dir / "privacy_report.json").read_text())
    assert r["privacy_unit"] == "slice"
    assert r["n_units"] > 28  # slices, not patients
    notes = " ".join(r["notes"]).lower()
    assert "group privacy" in notes and "does not" in notes


def test_audit_separates_an_overfit_baseline_from_a_strongly_private_model(prep, tmp_path):
    """Same data, same model: memorised (no DP, random labels, last weights) vs epsilon 0.5.

    Random labels force memorisation: nothing generalises, so the training patients' losses
    fall while the held-out patients' do not; a DP model cannot do this (a constant attack
    would score 0.5 on both and fail the first assertion).
    """
    import csv
    import shutil

    shuffled = tmp_path / "prep_random_labels"
    shutil.copytree(prep, shuffled)
    with (shuffled / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    patients = sorted({r["patient_id"] for r in rows})
    flips = np.random.default_rng(0).permutation([0, 1] * (len(patients) // 2))
    label = dict(zip(patients, flips, strict=True))
    for r in rows:
        r["label"] = str(int(label[r["patient_id"]]))
    with (shuffled / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    overfit = train(
        shuffled,
        config=replace(
            TINY,
            epochs=120,
            batch_size=4,
            max_slices_per_unit=6,
            optimizer=OptimizerName.ADAM,
            learning_rate=0.003,
            restore_best=False,
        ),
        target_epsilon=math.inf,
        runs_dir=tmp_path,
        run_id="overfit",
    )
    private = train(shuffled, config=TINY, target_epsilon=0.5, runs_dir=tmp_path, run_id="dp")
    leaky = json.loads((overfit.run_dir / "audit.json").read_text())
    safe = json.loads((private.run_dir / "audit.json").read_text())
    assert leaky["attack_auc"] > 0.85, leaky["attacks"]
    assert safe["attack_auc"] < 0.75, safe["attacks"]
    assert leaky["attack_auc"] - safe["attack_auc"] > 0.2
    assert safe["epsilon_estimate"] <= 0.5  # never above the guarantee
    assert safe["members"] + safe["non_members"] == 40
    md = (private.run_dir / "privacy_report.md").read_text()
    assert "Empirical audit" in md and "estimate from one model" in md


def test_cli_audit_rewrites_the_runs_audit(dp_run, capsys):
    (dp_run.run_dir / "audit.json").unlink()
    assert main(["audit", str(dp_run.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "loss_threshold" in out and "epsilon estimate" in out
    audit = json.loads((dp_run.run_dir / "audit.json").read_text())
    report = json.loads((dp_run.run_dir / "privacy_report.json").read_text())
    assert report["audit"] == audit


def test_cli_audit_of_a_folder_that_is_not_a_run_says_so(tmp_path, capsys):
    assert main(["audit", str(tmp_path)]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_per_layer_clipping_leaves_the_accounting_unchanged(prep, tmp_path):
    """Sensitivity stays C (sum of C_l^2 = C^2): same sigma, q, steps, epsilon as flat."""
    from covidct.privacy.modes import ClippingMode, PerLayerSplit

    flat_run = train(prep, config=TINY, target_epsilon=3.0, runs_dir=tmp_path, run_id="flat")
    layered = train(
        prep,
        config=replace(
            TINY, clipping=ClippingMode.PER_LAYER, per_layer_split=PerLayerSplit.PROPORTIONAL
        ),
        target_epsilon=3.0,
        runs_dir=tmp_path,
        run_id="per_layer",
    )
    for key in ("noise_multiplier", "sampling_rate", "steps", "epsilon", "delta", "clip_norm"):
        assert getattr(layered.privacy, key) == getattr(flat_run.privacy, key), key


def test_cli_model_and_clipping_flags_reach_the_resolved_config(prep, tmp_path, capsys):
    argv = ["train", "--data", str(prep), "--epsilon", "3", "--runs", str(tmp_path)]
    argv += ["--no-progress", "--set", "train.epochs=1", "--set", "train.batch_size=8"]
    argv += ["--model", "gn_cnn_small"]
    assert main([*argv, "--run-id", "pl", "--clipping", "per-layer", "--pipeline-stages", "2"]) == 0
    assert "per-stage clipping: 2 stage(s)" in capsys.readouterr().err
    cfg = (tmp_path / "pl" / "config.yaml").read_text()
    assert "clipping: per-layer" in cfg and "pipeline_stages: 2" in cfg
    assert "model: gn_cnn_small" in cfg
    assert main([*argv[:-1], "no_such_model", "--run-id", "nm"]) == 2
    assert "available models: attenuation, gn_cnn_small" in capsys.readouterr().err
    # stages without per-layer clipping, or more stages than layers: refused before training
    assert main([*argv, "--run-id", "bad", "--pipeline-stages", "2"]) == 2
    assert "add --clipping per-layer" in capsys.readouterr().err
    assert (
        main([*argv, "--run-id", "bad2", "--clipping", "per-layer", "--pipeline-stages", "99"]) == 2
    )
    assert "too few for 99" in capsys.readouterr().err
    assert not (tmp_path / "bad2").exists()  # refused before a run folder or ledger entry


def test_initial_weights_are_loaded_and_named_in_the_report(dp_run, prep, tmp_path):
    import hashlib

    from covidct.tfsetup import keras

    start = keras.models.load_model(dp_run.run_dir / "model.keras", compile=False)
    weights = tmp_path / "public.weights.h5"
    start.save_weights(str(weights))
    cfg = replace(TINY, epochs=1, learning_rate=0.0, initial_weights=str(weights))
    result = train(prep, config=cfg, target_epsilon=3.0, runs_dir=tmp_path, run_id="init")
    end = keras.models.load_model(result.run_dir / "model.keras", compile=False)
    for a, b in zip(end.get_weights(), start.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # learning rate 0: the run kept the loaded weights
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["initial_weights"]["sha256"] == digest
    assert any(digest[:16] in note for note in result.privacy.notes)
    bad = replace(cfg, initial_weights=str(tmp_path / "missing.h5"))
    with pytest.raises(DataError, match="not found"):
        train(prep, config=bad, target_epsilon=3.0, runs_dir=tmp_path, run_id="bad")
    assert not (tmp_path / "bad").exists()  # refused before a run folder or ledger entry


def test_an_early_stop_counts_the_planned_steps_and_fallback_patients_are_named(prep, tmp_path):
    """Learning rate 0: validation never improves, so patience 1 stops after epoch 2 of 4. The
    cohort is NIfTI only: every "patient" is a file name standing for one."""
    from covidct.privacy import accounting
    from covidct.privacy.ledger import read_ledger

    cfg = replace(TINY, epochs=4, learning_rate=0.0, early_stopping_patience=1)
    plan = plan_privacy(n_units=28, config=cfg, target_epsilon=3.0)
    messages: list[str] = []
    res = train(
        prep,
        config=cfg,
        target_epsilon=3.0,
        runs_dir=tmp_path,
        run_id="es",
        on_event=messages.append,
    )
    taken = 2 * plan.steps_per_epoch
    r = json.loads((res.run_dir / "privacy_report.json").read_text())
    assert len(json.loads((res.run_dir / "history.json").read_text())) == 2
    assert r["steps"] == plan.steps and r["steps_taken"] == taken < plan.steps
    assert r["epsilon"] == pytest.approx(
        accounting.compute_epsilon(
            noise_multiplier=plan.noise_multiplier,
            sampling_rate=plan.sampling_rate,
            steps=plan.steps,
            delta=plan.delta,
        )
    )
    meta = json.loads((res.run_dir / "run.json").read_text())
    assert meta["steps"] == taken and meta["steps_accounted"] == plan.steps
    (entry,) = [e for e in read_ledger(prep).entries if e.run_dir == str(res.run_dir.resolve())]
    assert entry.status == "finished" and entry.steps == plan.steps
    assert any("stopped early" in n for n in r["notes"])

    # prepare's identity fallbacks, said before training and in the report
    warning = next(m for m in messages if m.startswith("warning:"))
    assert messages.index(warning) < next(i for i, m in enumerate(messages) if "device" in m)
    assert "none of the 28 training units is identified by a DICOM PatientID" in warning
    assert "NIfTI file" in warning
    assert r["unit_bases"] == {"nifti_file": 28}
    note = next(n for n in r["notes"] if "fallbacks" in n)
    assert note.startswith("None of the 28 training patients") and "28 x a NIfTI file" in note
    released = next(n for n in r["notes"] if n.startswith("Published without noise"))
    assert "N = 28" in released and "validation" in released and "audit" in released
    assert "SHAKE-256" in r["randomness"]


def test_augmentation_multiplicity_trains_and_the_report_says_so(prep, tmp_path):
    from covidct.config import ConfigError
    from covidct.privacy.ledger import read_ledger

    before = len(read_ledger(prep).entries)
    with pytest.raises(ConfigError, match="augment_views"):
        train(prep, config=replace(TINY, augment_views=2), target_epsilon=3.0, runs_dir=tmp_path)
    assert len(read_ledger(prep).entries) == before  # refused before anything was counted
    cfg = replace(TINY, epochs=1, augment=True, augment_views=3)
    result = train(prep, config=cfg, target_epsilon=3.0, runs_dir=tmp_path, run_id="am")
    assert any("3 flipped/shifted views" in note for note in result.privacy.notes)
    plain = train(
        prep,
        config=replace(cfg, augment_views=1),
        target_epsilon=3.0,
        runs_dir=tmp_path,
        run_id="plain",
    )
    # the views change what a unit's gradient is computed on, not the accounting
    assert result.privacy.epsilon == plain.privacy.epsilon
    assert not any("views" in note for note in plain.privacy.notes)


@pytest.mark.parametrize("rid", ["../escape", "a/b", "/abs", ".hidden"])
def test_a_run_id_that_is_a_path_is_refused_before_anything_is_written(prep, tmp_path, rid, capsys):
    from covidct.privacy.ledger import read_ledger

    before = len(read_ledger(prep).entries)
    runs = tmp_path / "runs"
    code = main(
        [
            "train",
            "--data",
            str(prep),
            "--epsilon",
            "3",
            "--runs",
            str(runs),
            "--run-id",
            rid,
            "--set",
            "train.model=gn_cnn_small",
        ]
    )
    assert code == 2
    assert "is not one folder name" in capsys.readouterr().err
    assert len(read_ledger(prep).entries) == before
    assert not runs.exists() and not (tmp_path / "escape").exists()
