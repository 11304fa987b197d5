"""The patient-level stratified split and the manifest that training reads."""

from __future__ import annotations

import csv
import enum
import hashlib
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from data_prep.atomic import atomic_write_text


class Split(enum.Enum):
    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


MANIFEST_COLUMNS = (
    "patient_id",
    "volume_id",
    "split",
    "label",
    "file",
    "index",
    "source_slice",
    "position_mm",
    "kind",
    "unit_basis",
)


@dataclass(frozen=True)
class SliceRow:
    """One prepared slice. Only pseudonyms and geometry: nothing identifying."""

    patient_id: str
    volume_id: str
    split: str
    label: int
    file: str  # relative to PREP, e.g. slices/V-xxxx.npy
    index: int  # row within that file
    source_slice: int  # index of the slice in its canonical source volume
    position_mm: float  # position along the patient axis (NaN for slice images)
    kind: str  # "hu" or "gray8"
    # how prepare decided the patient (data_prep.deid.UnitBasis): a real PatientID or a fallback
    unit_basis: str = "unknown"


def assign_splits(
    patient_labels: Mapping[str, int],
    *,
    fractions: tuple[float, float, float],
    seed: int,
) -> dict[str, Split]:
    """Split patients (never slices) into train/validation/test, stratified by label.

    Within each label, patients are ordered by a seeded hash of their pseudonym, so a patient's
    place does not depend on input order and the split is reproducible.

    Args:
        patient_labels: patient pseudonym -> 0/1.
        fractions: train, validation, test fractions (sum to 1).
        seed: changes the assignment.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    out: dict[str, Split] = {}
    for label in sorted(set(patient_labels.values())):
        members = sorted(
            (p for p, lab in patient_labels.items() if lab == label),
            key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest(),
        )
        n = len(members)
        n_test = round(n * fractions[2])
        n_val = round(n * fractions[1])
        if n >= 3 and fractions[2] > 0:
            n_test = max(n_test, 1)
        if n >= 3 and fractions[1] > 0:
            n_val = max(n_val, 1)
        for i, p in enumerate(members):
            if i < n_test:
                out[p] = Split.TEST
            elif i < n_test + n_val:
                out[p] = Split.VALIDATION
            else:
                out[p] = Split.TRAIN
    return out


def write_manifest(path: Path, rows: Iterable[SliceRow]) -> int:
    """Write the manifest CSV atomically; returns the number of rows."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    n = 0
    for r in rows:
        pos = "" if r.position_mm != r.position_mm else f"{r.position_mm:.3f}"
        writer.writerow(
            [
                r.patient_id,
                r.volume_id,
                r.split,
                r.label,
                r.file,
                r.index,
                r.source_slice,
                pos,
                r.kind,
                r.unit_basis,
            ]
        )
        n += 1
    atomic_write_text(path, buf.getvalue())
    return n


def read_manifest(path: Path) -> list[SliceRow]:
    """Read a manifest written by ``write_manifest``."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return [
            SliceRow(
                patient_id=r["patient_id"],
                volume_id=r["volume_id"],
                split=r["split"],
                label=int(r["label"]),
                file=r["file"],
                index=int(r["index"]),
                source_slice=int(r["source_slice"]),
                position_mm=float(r["position_mm"]) if r["position_mm"] else float("nan"),
                kind=r["kind"],
                unit_basis=r.get("unit_basis") or "unknown",  # older manifests lack it
            )
            for r in reader
        ]
