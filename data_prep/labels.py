"""Labels: from a CSV (by patient id, study UID or path) or from class-folder names."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.errors import LabelError

POSITIVE_WORDS = frozenset({"1", "positive", "pos", "covid", "covid19", "yes", "true", "p"})
NEGATIVE_WORDS = frozenset(
    {"0", "negative", "neg", "noncovid", "normal", "no", "false", "n", "healthy"}
)
# Folder names of the public datasets (COVID-CT, SARS-CoV-2 CT-scan, MosMedData) and common ones.
_FOLDER_POSITIVE = frozenset(
    {"ctcovid", "covid", "covid19", "positive", "ct1", "ct2", "ct3", "ct4"}
)
_FOLDER_NEGATIVE = frozenset({"ctnoncovid", "noncovid", "negative", "normal", "ct0", "healthy"})


def _norm(word: str) -> str:
    return re.sub(r"[\s_\-.]", "", word.strip().lower())


def parse_label(text: str) -> int | None:
    """0/1 from the usual spellings (1/0, positive/negative, covid/non-covid), else None."""
    w = _norm(text)
    if w in POSITIVE_WORDS:
        return 1
    if w in NEGATIVE_WORDS:
        return 0
    return None


def folder_label(path: Path, root: Path) -> int | None:
    """Label of the nearest class folder between ``path`` and ``root`` (e.g. CT-0, COVID)."""
    try:
        parts = path.relative_to(root).parts[:-1]
    except ValueError:
        parts = path.parts[:-1]
    for part in reversed((root.name, *parts)):
        label = class_folder_label(part)
        if label is not None:
            return label
    return None


def class_folder_label(name: str) -> int | None:
    """0/1 when a folder name is a class name (CT_COVID, non-COVID, CT-0 ... CT-4), else None."""
    w = _norm(name)
    if w in _FOLDER_POSITIVE:
        return 1
    if w in _FOLDER_NEGATIVE:
        return 0
    return None


@dataclass
class LabelTable:
    """Labels read from one CSV, keyed by the source identifiers (PRIVATE: never written)."""

    name: str = ""  # the CSV's file name, for messages
    by_patient: dict[str, int] = field(default_factory=dict)
    by_study: dict[str, int] = field(default_factory=dict)
    by_path: dict[str, int] = field(default_factory=dict)
    # (row number, identifier column, identifier) for matching later; identifiers stay private
    rows: list[tuple[int, str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


ID_COLUMNS = ("patient_id", "study_uid", "path")


def read_label_csv(path: Path) -> LabelTable:
    """Read a label CSV with a ``label`` column and one of patient_id / study_uid / path.

    Bad rows are collected in ``problems`` (by row number, never by identifier) and skipped.

    Raises:
        LabelError: the file cannot be read or lacks the required columns.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"cannot read label file {path}: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    columns = {(_c or "").strip().lower(): _c for _c in (reader.fieldnames or [])}
    id_cols = [c for c in ID_COLUMNS if c in columns]
    if "label" not in columns or not id_cols:
        raise LabelError(
            f"label file {path} needs a 'label' column and one of {', '.join(ID_COLUMNS)}; "
            f"found columns {sorted(columns)}"
        )
    table = LabelTable(name=path.name)
    seen: dict[tuple[str, str], int] = {}
    for row_no, row in enumerate(reader, start=2):
        raw_label = (row.get(columns["label"]) or "").strip()
        label = parse_label(raw_label)
        if label is None:
            table.problems.append(
                f"{path.name} row {row_no}: label {raw_label[:20]!r} is not one of "
                "0/1, negative/positive, non-covid/covid"
            )
            continue
        col = next((c for c in id_cols if (row.get(columns[c]) or "").strip()), None)
        if col is None:
            table.problems.append(f"{path.name} row {row_no}: no patient_id, study_uid or path")
            continue
        ident = (row.get(columns[col]) or "").strip()
        if col == "path":
            ident = str((path.parent / ident).resolve())
        previous = seen.get((col, ident))
        if previous is not None and previous != label:
            table.problems.append(f"{path.name} row {row_no}: contradicts an earlier row's label")
            continue
        seen[(col, ident)] = label
        {"patient_id": table.by_patient, "study_uid": table.by_study, "path": table.by_path}[col][
            ident
        ] = label
        table.rows.append((row_no, col, ident))
    return table
