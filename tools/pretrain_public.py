"""Make the public starting weights of the demo: pretraining on a PUBLIC synthetic cohort.

Public pretraining is how DP-SGD is used in practice on small medical datasets: start from
weights learned on data that needs no protection, then train privately on the patients. Here the
public data is a synthetic cohort with its own seed (configs/pretrain_public.yaml): no patient of
any private dataset is in it, so the weights carry no private information and spend no privacy
budget. This script regenerates the file the demo uses, with a provenance record next to it:

    .venv/bin/python tools/pretrain_public.py [--out covidct/assets/public_gn_cnn_small_96_lungs]

writes OUT.weights.h5 (weights only, loaded by train.initial_weights) and OUT.json (cohort
settings, training settings, the public test AUC, the file's SHA-256 and the commit).
It runs covidct synth, prepare and train --no-dp in a scratch folder (34 minutes on 2
cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "pretrain_public.yaml"


def _covidct(*args: str) -> None:
    cmd = [sys.executable, "-m", "covidct.cli", *args]
    print("+ covidct " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=ROOT / "covidct/assets/public_gn_cnn_small_96_lungs"
    )
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="covidct-public-") as tmp:
        work = args.work or Path(tmp)
        cohort, prep, runs = work / "cohort", work / "prep", work / "runs"
        cfg = ["--config", str(CONFIG)]
        _covidct("synth", *cfg, "--out", str(cohort))
        labels = str(cohort / "labels.csv")
        _covidct(
            "prepare", *cfg, str(cohort), "--labels", labels, "--out", str(prep), "--no-progress"
        )
        train = ["--data", str(prep), "--no-dp", "--runs", str(runs), "--run-id", "public"]
        _covidct("train", *cfg, *train, "--no-progress")
        run = runs / "public"
        from covidct.tfsetup import keras

        model = keras.models.load_model(run / "model.keras", compile=False)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        weights = args.out.with_suffix(".weights.h5")
        model.save_weights(str(weights))
        metrics = json.loads((run / "metrics.json").read_text())
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        import yaml

        provenance = {
            "what": "public starting weights for covidct's demo (train.initial_weights)",
            "data": "synthetic public cohort, no patient of any private dataset",
            "config": yaml.safe_load(CONFIG.read_text()),
            "public_test_patient_auc": metrics["patient"]["auc"],
            "weights_file": weights.name,
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "covidct_commit": commit,
        }
        args.out.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
        print(f"wrote {weights} (public test patient AUC {metrics['patient']['auc']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
