"""Make the public starting weights of the demo: pretraining on a PUBLIC synthetic cohort.

Public pretraining is how DP-SGD is used in practice on small medical datasets: start from
weights learned on data that needs no protection, then train privately on the patients. Here the
public data is a synthetic cohort with its own seed (configs/pretrain_public.yaml): no patient of
any private dataset is in it, so the weights carry no private information and spend no privacy
budget. This script regenerates the file the demo uses, with a provenance record next to it:

    .venv/bin/python tools/pretrain_public.py [--out covidct/assets/public_gn_cnn_small_96_lungs]

writes OUT.weights.h5 (weights only, loaded by train.initial_weights) and OUT.json (covidct
pretrain's provenance: the file's SHA-256, the public manifest's, every public scan's; plus the
cohort settings and the commit). It runs covidct synth, prepare and pretrain in a scratch folder
(34 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--config", type=Path, default=CONFIG, help="the public cohort's settings")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="covidct-public-") as tmp:
        work = args.work or Path(tmp)
        cohort, prep, runs = work / "cohort", work / "prep", work / "runs"
        cfg = ["--config", str(args.config)]
        _covidct("synth", *cfg, "--out", str(cohort))
        labels = str(cohort / "labels.csv")
        _covidct(
            "prepare", *cfg, str(cohort), "--labels", labels, "--out", str(prep), "--no-progress"
        )
        out = args.out
        _covidct(
            "pretrain",
            *cfg,
            "--data",
            str(prep),
            "--out",
            str(out),
            "--runs",
            str(runs),
            "--run-id",
            "public",
            "--no-progress",
        )
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        import yaml

        from data_prep.atomic import atomic_write_json

        # covidct pretrain's provenance, plus how this public cohort was made
        record = out.with_name(out.name + ".json")
        provenance = json.loads(record.read_text())
        provenance.update(
            {
                "what": "public starting weights for covidct's demo (train.initial_weights), "
                "made by covidct pretrain WITHOUT differential privacy",
                "data": "synthetic public cohort, no patient of any private dataset",
                "config": yaml.safe_load(args.config.read_text()),
                "covidct_commit": commit,
            }
        )
        atomic_write_json(record, provenance)
        print(f"wrote {out}.weights.h5 and {record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
