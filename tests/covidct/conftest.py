"""Fixtures of the training tests: one small prepared dataset per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.pipeline import PrepConfig, prepare
from data_prep.synth import CohortFormat, SynthConfig, write_cohort
from data_prep.worker import SliceSettings


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


@pytest.fixture(scope="session", autouse=True)
def _deterministic_tensorflow() -> None:
    """Same results whatever ran before and however busy the CPU is (thread-order-dependent
    float sums otherwise make long memorisation runs drift between test orders)."""
    from covidct.tfsetup import tf

    tf.config.experimental.enable_op_determinism()
