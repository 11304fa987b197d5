"""Does the default recipe learn privately from a cohort it was not tuned on? Prints JSON.

What a new user runs, on a synthetic cohort of the given style (``covidct synth --style``):
``covidct prepare`` with its defaults (or ``--prepare-set`` overrides), then ``covidct train``
with its defaults at each epsilon, on ``--splits`` patient splits (``prepare.seed`` 0, 1, 2...).
The non-private baseline is tuned: one run per learning rate of ``--baseline-lrs``, the one with
the best VALIDATION patient AUC is reported (its test AUC), so it is a real baseline, not the
private recipe without noise.

Reported per epsilon: the test patient AUC (mean and per split), the mild-disease-vs-negative
test AUC (severe patients left out; from synth's truth.csv), and the seconds of each run (the
first run of a split includes computing the features; the others reuse the cache).

    .venv/bin/python benchmarks/study_defaults.py --style b --patients 600 --slices 16 \\
        --matrix 128 --seed 11 --work /tmp/study_b

Every run goes through the CLI, as a user's would; ``--train-set`` adds ``--set`` overrides to
every training (to compare recipes); the defaults are what ``covidct train`` uses with no flag.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from covidct import checkpoint
from covidct.runs import Run
from data_prep.prepared import PrepFolder

ROOT = Path(__file__).resolve().parents[1]


def _covidct(*args: str) -> None:
    cmd = [sys.executable, "-m", "covidct.cli", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def _burdens(prep: Path, truth: Path) -> dict[str, str]:
    """Pseudonym -> none | mild | severe (study only: reads PREP/private)."""
    with truth.open(newline="") as f:
        by_source = {r["patient_id"]: r["burden"] for r in csv.DictReader(f)}
    with PrepFolder(prep).pseudonym_map.open(newline="") as f:
        return {r["patient_id"]: by_source[r["source_patient_id"]] for r in csv.DictReader(f)}


def _test_scores(run: Path, prep: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Test patients' scores: the run's trained head (taken from its saved model) on the cached
    features, through covidct's own prediction (the same as the saved model on slices)."""
    import covidct.features  # noqa: F401
    from covidct.data.units import PrivacyUnit, load_units
    from covidct.evaluate import PatientScore, predict
    from covidct.features import from_record
    from covidct.features.cache import FeatureStore
    from covidct.models import build_head
    from covidct.tfsetup import keras

    meta, metrics = Run(run).meta(), Run(run).metrics()
    spec = from_record(meta["features"])
    saved = keras.models.load_model(Run(run).model_file, compile=False)
    norm = saved.get_layer("standardise")
    head = build_head(meta["model"], mean=norm.input_mean, variance=norm.input_variance)
    head.get_layer("logit").set_weights(saved.get_layer("logit").get_weights())
    units = load_units(prep, "test", PrivacyUnit.PATIENT)
    pred = predict(head, units, FeatureStore(prep, spec))
    return pred.by_patient(PatientScore(metrics.get("patient_score", "mean")))


def _aucs(run: Path, prep: Path, truth: Path) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    patients, labels, scores = _test_scores(run, prep)
    burden = _burdens(prep, truth)
    keep = np.array([burden[p] != "severe" for p in patients])
    return {
        "test_auc": round(float(roc_auc_score(labels, scores)), 4),
        "mild_vs_negative_auc": round(float(roc_auc_score(labels[keep], scores[keep])), 4),
    }


def _train(prep: Path, runs: Path, rid: str, eps: str, extra: list[str]) -> tuple[Path, float]:
    t0 = time.perf_counter()
    flag = ["--no-dp"] if eps == "inf" else ["--epsilon", eps]
    _covidct(
        "train",
        "--data",
        str(prep),
        *flag,
        "--runs",
        str(runs),
        "--run-id",
        rid,
        "--no-progress",
        *extra,
    )
    return runs / rid, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (kept: resumable)")
    ap.add_argument("--cohort", type=Path, help="an existing synth cohort (else one is made)")
    ap.add_argument("--style", default="a")
    ap.add_argument("--patients", type=int, default=600)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--matrix", type=int, default=128)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--epsilons", default="3,inf")
    ap.add_argument("--baseline-lrs", default="", help="learning rates tried for epsilon inf")
    ap.add_argument("--prepare-set", action="append", default=[])
    ap.add_argument("--train-set", action="append", default=[])
    args = ap.parse_args(argv)

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cohort = args.cohort or work / "cohort"
    if not (cohort / "labels.csv").is_file():
        _covidct(
            "synth",
            "--out",
            str(cohort),
            "--patients",
            str(args.patients),
            "--slices",
            str(args.slices),
            "--matrix",
            str(args.matrix),
            "--seed",
            str(args.seed),
            "--style",
            args.style,
            "--formats",
            "nifti",
        )
    truth = cohort / "truth.csv"
    pset = [a for s in args.prepare_set for a in ("--set", s)]
    tset = [a for s in args.train_set for a in ("--set", s)]
    tag = (
        "-".join(
            re.sub(r"[^A-Za-z0-9._]", "_", s.replace("train.", "").replace("=", ""))
            for s in args.train_set
        )
        or "defaults"
    )
    results: dict[str, Any] = {
        "cohort": str(cohort),
        "style": args.style,
        "train_set": args.train_set,
        "prepare_set": args.prepare_set,
        "per_epsilon": {},
    }
    first_prep: Path | None = None
    per: dict[str, list[dict[str, Any]]] = {}
    for split in range(args.splits):
        prep = work / f"prep{split}"
        if not PrepFolder(prep).manifest_file.is_file():
            _covidct(
                "prepare",
                str(cohort),
                "--labels",
                str(cohort / "labels.csv"),
                "--out",
                str(prep),
                "--no-progress",
                "--set",
                f"prepare.seed={split}",
                *pset,
            )
            cache = PrepFolder.FEATURES
            if first_prep is not None and (first_prep / cache).is_dir():
                # same slices and settings, another split: the cache is keyed by them only
                shutil.copytree(first_prep / cache, prep / cache, dirs_exist_ok=True)
        first_prep = first_prep or prep
        for eps in args.epsilons.split(","):
            lrs = args.baseline_lrs.split(",") if eps == "inf" and args.baseline_lrs else [""]
            tried = []
            for lr in lrs:
                # a run without DP trains at train.baseline_learning_rate (covidct.train)
                extra = tset + (["--set", f"train.baseline_learning_rate={lr}"] if lr else [])
                rid = f"{tag}-s{split}-eps{eps}" + (f"-blr{lr}" if lr else "")
                run = work / "runs" / rid
                seconds = math.nan
                if not Run(run).is_finished:
                    shutil.rmtree(run, ignore_errors=True)
                    run, seconds = _train(prep, work / "runs", rid, eps, extra)
                metrics = Run(run).metrics()
                plan = checkpoint.read_plan(run)
                tried.append(
                    {
                        "lr": lr or "default",
                        # what the run trained at, from its own plan (not what was asked)
                        "lr_used": plan["train"]["learning_rate"],
                        "validation_auc_best": round(metrics["validation_patient_auc_best"], 4),
                        **_aucs(run, prep, truth),
                        "seconds": round(seconds, 1),
                    }
                )
            best = max(tried, key=lambda r: r["validation_auc_best"])
            per.setdefault(eps, []).append({"split": split, **best, "tried": tried})
    for eps, rows in per.items():
        results["per_epsilon"][eps] = {
            "test_auc_mean": round(float(np.mean([r["test_auc"] for r in rows])), 4),
            "mild_vs_negative_auc_mean": round(
                float(np.mean([r["mild_vs_negative_auc"] for r in rows])), 4
            ),
            "splits": rows,
        }
    if "3" in per and "inf" in per:
        results["gap_eps3_vs_baseline"] = round(
            results["per_epsilon"]["inf"]["test_auc_mean"]
            - results["per_epsilon"]["3"]["test_auc_mean"],
            4,
        )
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
