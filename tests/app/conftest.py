"""Runs for the dashboard tests: one DP run and a two-point sweep on the session's tiny data."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from covidct.sweep import run_sweep
from covidct.train import train
from covidct.train_config import TrainConfig

TINY = TrainConfig(epochs=1, batch_size=8, max_slices_per_unit=2, chunk_units=8, seed=1)


@pytest.fixture(scope="session")
def runs(prep, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dash_runs")
    train(prep, config=TINY, target_epsilon=3.0, runs_dir=root, run_id="eps3")
    run_sweep(
        prep,
        root / "sweep1",
        epsilons=[2.0, float("inf")],
        batch_sizes=[8],
        seeds=1,
        config=TINY,
        resolved_config={"train": {}},
    )
    return root


def nifti_upload(cohort: Path) -> tuple[str, bytes]:
    path = sorted((cohort / "nifti").glob("*.nii.gz"))[0]
    return path.name, path.read_bytes()


def dicom_zip(cohort: Path) -> bytes:
    series = sorted(p for p in (cohort / "dicom").glob("*/*/*") if p.name == "2_chest_axial")[0]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(series.iterdir()):
            zf.writestr(p.name, p.read_bytes())
    return buf.getvalue()
