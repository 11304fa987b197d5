"""Shared fixtures: a small synthetic cohort, written once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.synth import CohortFormat, SynthConfig, write_cohort


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
