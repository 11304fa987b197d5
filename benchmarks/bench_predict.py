"""Dashboard prediction latency: one 64-slice 128x128 scan, after the model is loaded.

Prints one JSON object. Side by side in one process: a zipped DICOM series and the same scan as
NIfTI, each read in memory (data_prep.uploads), preprocessed, predicted (every slice) and given a
Grad-CAM map on one slice, as the Predict page does; for models trained at 64 and 128 pixels.
Median of --repeats runs after one warm-up (TensorFlow traces its graphs on first use).

    .venv/bin/python benchmarks/bench_predict.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from app.services import heat_overlay, predict_upload
from covidct.evaluate import PatientScore
from covidct.inference import ModelBundle
from covidct.models import build_model
from data_prep.synthetic.cohort import make_identities, write_dicom_series, write_nifti
from data_prep.synthetic.phantom import make_phantom
from data_prep.worker import SliceSettings


def scans(tmp: Path) -> dict[str, list[tuple[str, bytes]]]:
    phantom = make_phantom(
        np.random.default_rng(0), n_slices=64, matrix=128, positive=True, burden="mild"
    )
    series = tmp / "series"
    write_dicom_series(phantom, series, identity=make_identities(0, 1)[0])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(series.rglob("*")):
            if p.is_file():
                zf.writestr(p.name, p.read_bytes())
    nii = write_nifti(phantom, tmp / "scan.nii.gz")
    return {
        "dicom_zip": [("series.zip", buf.getvalue())],
        "nifti": [(nii.name, nii.read_bytes())],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uploads = scans(Path(tmp))
    results: dict[str, dict[str, float | int]] = {}
    for size in (64, 128):
        bundle = ModelBundle(
            run_dir=Path(f"bench-{size}"),
            model=build_model("gn_cnn_small", input_size=size, seed=0),
            settings=SliceSettings(image_size=size),
            patient_score=PatientScore.MEAN,
            threshold=0.5,
            epsilon=3.0,
            privacy_unit="patient",
            test_patient_auc=None,
        )
        for kind, files in uploads.items():
            times, n = [], 0
            for i in range(args.repeats + 1):
                t0 = time.perf_counter()
                result = predict_upload(bundle, files)
                heat_overlay(bundle, result, int(result.prediction.slice_probs.argmax()))
                if i:  # the first call traces TensorFlow's graphs
                    times.append(time.perf_counter() - t0)
                n = result.n_slices
            results[f"{kind}_model{size}"] = {
                "seconds_median": round(statistics.median(times), 3),
                "seconds_max": round(max(times), 3),
                "slices_analysed": n,
            }
    print(
        json.dumps(
            {
                "benchmark": "dashboard_predict",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "scan": "64 slices of 128x128 (synthetic phantom), zipped DICOM and NIfTI",
                "includes": "in-memory read + preprocessing + prediction + Grad-CAM on one slice",
                "target_seconds": 3.0,
                "variants": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
