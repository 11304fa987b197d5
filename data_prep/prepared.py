"""A prepared folder (PREP): the one module that knows its file names.

``covidct prepare`` writes it (``pipeline``, ``worker``, ``assemble``); training, the feature
cache, the budget ledger, public pretraining, the model card and inference read it through
``PrepFolder``::

    dataset.json        settings and counts (what training needs to know)
    manifest.csv        one row per slice: pseudonyms, split, label, file, position
    prep_report.json    counts, every skipped or flagged input (by reference, never by path)
    slices/V-*.npy      (n, size, size) per volume; np.load(mmap_mode="r") streams them
    features/           covidct's cache of fixed slice features (covidct.features.cache)
    private/            the ONLY place holding identifiers: pseudonym key, source maps
    .state/             per-job records that make re-runs idempotent and resumable
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class PrepFolder:
    """A prepared folder's paths. Pure naming: nothing is read or created on construction."""

    DATASET = "dataset.json"
    MANIFEST = "manifest.csv"
    REPORT = "prep_report.json"
    SLICES = "slices"
    FEATURES = "features"
    PRIVATE = "private"
    STATE = ".state"
    # inside private/ (mode 0700)
    KEY = "pseudonym.key"  # the HMAC key behind every pseudonym
    PSEUDONYM_MAP = "pseudonym_map.csv"  # pseudonym -> source patient id
    INPUTS = "inputs.csv"  # source path of every input, by reference
    JOBS = "jobs"  # one record per job (private/jobs: its identifiers; .state/jobs: the rest)
    # inside .state/
    LABEL_STATE = "labels.json"
    SKIPS = "skips.json"
    # a folder's budget ledger from before ledgers were kept per cohort (read, never written)
    LEGACY_LEDGER = "privacy_ledger.json"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"PrepFolder({str(self.path)!r})"

    @property
    def dataset_file(self) -> Path:
        return self.path / self.DATASET

    @property
    def manifest_file(self) -> Path:
        return self.path / self.MANIFEST

    @property
    def report_file(self) -> Path:
        return self.path / self.REPORT

    @property
    def slices_dir(self) -> Path:
        return self.path / self.SLICES

    @property
    def features_dir(self) -> Path:
        return self.path / self.FEATURES

    @property
    def private_dir(self) -> Path:
        return self.path / self.PRIVATE

    @property
    def state_dir(self) -> Path:
        return self.path / self.STATE

    @property
    def pseudonym_map(self) -> Path:
        return self.private_dir / self.PSEUDONYM_MAP

    @property
    def inputs_file(self) -> Path:
        return self.private_dir / self.INPUTS

    @property
    def legacy_ledger(self) -> Path:
        return self.path / self.LEGACY_LEDGER

    @classmethod
    def slice_name(cls, volume_id: str) -> str:
        """A volume's slice file relative to the folder, as the manifest names it."""
        return f"{cls.SLICES}/{volume_id}.npy"

    def slice_file(self, volume_id: str) -> Path:
        return self.path / self.slice_name(volume_id)

    def slice_files(self) -> list[Path]:
        """Every volume's slice file, sorted by name."""
        return sorted(self.slices_dir.glob("*.npy"))

    def job_record(self, key: str) -> Path:
        """A job's public record (what it produced; no identifier)."""
        return self.state_dir / self.JOBS / f"{key}.json"

    def private_job_record(self, key: str) -> Path:
        """A job's identifiers (patient key, study and series UIDs)."""
        return self.private_dir / self.JOBS / f"{key}.json"

    def dataset(self) -> dict[str, Any]:
        """``dataset.json`` (raises OSError or ValueError when missing or unreadable)."""
        return dict(json.loads(self.dataset_file.read_text()))
