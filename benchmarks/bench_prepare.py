"""Throughput of `prepare` (1 and 2 workers) vs bare pydicom read+decode of the same files.

Prints one JSON object. All variants run in this process, on the same synthetic DICOM cohort,
interleaved over --repeats rounds; medians are reported.

    .venv/bin/python benchmarks/bench_prepare.py [--patients 60 --slices 32 --matrix 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pydicom

from data_prep.pipeline import PrepConfig, prepare
from data_prep.synthetic.cohort import CohortFormat, SynthConfig, write_cohort
from data_prep.worker import SliceSettings


def bare_read_decode(files: list[Path]) -> float:
    t0 = time.perf_counter()
    total = 0
    for f in files:
        ds = pydicom.dcmread(f)
        total += int(ds.pixel_array.shape[0])
    assert total > 0
    return time.perf_counter() - t0


def run_prepare(cohort: Path, work: Path, workers: int, size: int) -> tuple[float, int]:
    out = work / f"prep-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = PrepConfig(slices=SliceSettings(image_size=size), workers=workers)
    t0 = time.perf_counter()
    res = prepare([cohort / "dicom"], out, config=cfg, labels=[cohort / "labels.csv"])
    return time.perf_counter() - t0, res.n_slices


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=60)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--matrix", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cohort = work / "cohort"
        cfg = SynthConfig(
            n_patients=args.patients,
            n_slices=args.slices,
            matrix=args.matrix,
            formats=CohortFormat.DICOM,
            seed=0,
        )
        write_cohort(cohort, cfg)
        files = sorted(p for p in (cohort / "dicom").rglob("*") if p.is_file())
        n_files = len(files)
        times: dict[str, list[float]] = {"bare_read_decode": [], "prepare_1": [], "prepare_2": []}
        kept = 0
        for _ in range(args.repeats):
            times["bare_read_decode"].append(bare_read_decode(files))
            t, kept = run_prepare(cohort, work, 1, args.image_size)
            times["prepare_1"].append(t)
            t, kept = run_prepare(cohort, work, 2, args.image_size)
            times["prepare_2"].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "benchmark": "prepare",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "cohort": {
                "patients": args.patients,
                "slices_per_volume": args.slices,
                "matrix": args.matrix,
                "dicom_files": n_files,
                "output_image_size": args.image_size,
                "slices_kept_after_lung_selection": kept,
            },
            "repeats": args.repeats,
            "seconds_median": {k: round(v, 3) for k, v in med.items()},
            "input_slices_per_s": {k: round(n_files / v, 1) for k, v in med.items()},
            "prepare_1_cost_vs_bare_read_decode": round(
                med["prepare_1"] / med["bare_read_decode"], 2
            ),
            "speedup_2_workers_vs_1": round(med["prepare_1"] / med["prepare_2"], 2),
            "aims": {
                "prepare_1_cost_vs_bare_read_decode": "<= 2.0",
                "speedup_2_workers_vs_1": ">= 1.6",
            },
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
