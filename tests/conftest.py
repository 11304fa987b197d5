"""Shared fixtures: a small synthetic cohort, written once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.pipeline import PrepConfig, prepare
from data_prep.synthetic.cohort import CohortFormat, SynthConfig, write_cohort
from data_prep.worker import SliceSettings


@pytest.fixture(scope="session", autouse=True)
def _site_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The site's ledgers and key live in a temporary COVIDCT_HOME, never the user's home
    (subprocesses inherit it)."""
    import os

    os.environ["COVIDCT_HOME"] = str(tmp_path_factory.mktemp("covidct_home"))


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 patients, mixed DICOM/NIfTI, 8 slices of 48x48: fast, and every code path of synth."""
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(
        out,
        SynthConfig(
            n_patients=12, n_slices=8, matrix=48, seed=7, formats=CohortFormat.MIXED, workers=1
        ),
    )
    return out


@pytest.fixture(scope="session")
def identities(cohort: Path) -> list[dict[str, str]]:
    return json.loads((cohort / "identities.json").read_text())


@pytest.fixture(scope="session")
def prep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_prep")
    write_cohort(
        root / "cohort",
        SynthConfig(
            n_patients=40, n_slices=6, matrix=32, seed=3, formats=CohortFormat.NIFTI, workers=1
        ),
    )
    # a fixed pseudonym key: the same pseudonyms, hence the same patient split, every session
    (root / "prep" / "private").mkdir(parents=True)
    (root / "prep" / "private" / "pseudonym.key").write_text("5eed" * 16)
    prepare(
        [root / "cohort"],
        root / "prep",
        config=PrepConfig(slices=SliceSettings(image_size=32), workers=1),
        labels=[root / "cohort" / "labels.csv"],
    )
    return root / "prep"


@pytest.fixture(scope="session")
def runs(prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Finished runs on ``prep``: one at epsilon 3 (``eps3``) and a two-point sweep
    (``sweep1``: epsilon 2 and the non-private baseline), trained briefly."""
    from covidct.sweep import run_sweep
    from covidct.train import train
    from covidct.train_config import TrainConfig

    tiny = TrainConfig(epochs=1, batch_size=8, max_slices_per_unit=2, chunk_units=8, seed=1)
    root = tmp_path_factory.mktemp("runs")
    train(prep, config=tiny, target_epsilon=3.0, runs_dir=root, run_id="eps3")
    run_sweep(
        prep,
        root / "sweep1",
        epsilons=[2.0, float("inf")],
        batch_sizes=[8],
        seeds=1,
        config=tiny,
        resolved_config={"train": {}},
    )
    return root
