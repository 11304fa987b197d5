"""A prepared folder of one's own for the feature tests (they write caches into it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from covidct.data.units import PrivacyUnit, load_units
from data_prep.prepared import PrepFolder


@pytest.fixture()
def own_prep(prep: Path, tmp_path: Path) -> Path:
    """A copy of the session's PREP without any feature cache."""
    data = tmp_path / "prep"
    shutil.copytree(prep, data, ignore=shutil.ignore_patterns(PrepFolder.FEATURES))
    return data


def all_files(prep: Path) -> list[str]:
    """Every slice file the manifest names, over all splits."""
    files = set()
    for split in ("train", "validation", "test"):
        for refs in load_units(prep, split, PrivacyUnit.PATIENT).slices:
            files.update(f for f, _ in refs)
    return sorted(files)
