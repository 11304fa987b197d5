"""Assembly: per-job records (this run's and earlier runs') -> labels, split, manifest, report.

Runs in the main process after the jobs. It builds the manifest and the report from the public
``JobRecord``s; the ``PrivateJobRecord``s serve only labels given by identifier or path and the
maps under ``PREP/private/``. Nothing identifying is written outside ``private/``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from data_prep.atomic import atomic_write_json, atomic_write_text
from data_prep.deid import Pseudonymizer
from data_prep.discover import Discovery
from data_prep.labels import LabelTable
from data_prep.manifest import SliceRow, assign_splits, write_manifest
from data_prep.prepared import PrepFolder
from data_prep.records import JobRecord, PrivateJobRecord
from data_prep.settings import PrepConfig

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class Problem:
    """A skipped or flagged input. ``path`` is PRIVATE (console only); ``ref`` goes in reports."""

    ref: str
    path: str
    what: str
    reason: str


@dataclass
class PrepareResult:
    out_dir: Path
    n_volumes: int
    n_slices: int
    n_patients: int
    split_patients: dict[str, int]
    skipped: list[Problem]
    flagged: list[Problem]
    reused: int
    processed: int

    @property
    def usable(self) -> bool:
        return self.n_slices > 0


R = TypeVar("R", JobRecord, PrivateJobRecord)


@dataclass(frozen=True)
class LabelledVolume:
    record: JobRecord
    label: int


def _load_records(folder: Path, kind: type[R]) -> dict[str, R]:
    out: dict[str, R] = {}
    for p in sorted(folder.glob("*.json")):
        try:
            out[p.stem] = kind.from_json(json.loads(p.read_text()))
        except (OSError, ValueError):
            logger.warning("unreadable state file %s ignored (its job will be redone)", p.name)
            p.unlink(missing_ok=True)
    return out


def _apply_labels(
    tables: list[LabelTable],
    ps: Pseudonymizer,
    private_jobs: dict[str, PrivateJobRecord],
    records: dict[str, JobRecord],
    state: dict[str, dict[str, int]],
) -> list[str]:
    """Merge this run's label CSVs into the persistent (pseudonymous) label state.

    Returns problems, by row number only.
    """
    problems: list[str] = []
    ok = {key: r for key, r in records.items() if r.ok}
    patients = {r.patient_id for r in ok.values()}
    studies = {r.study_id for r in ok.values()}
    # every source file and each folder above it -> the jobs beneath (labels by path)
    jobs_under: dict[str, set[str]] = defaultdict(set)
    if any(t.by_path for t in tables):
        for key, priv in private_jobs.items():
            for src in priv.sources:
                p = Path(src)
                for node in (p, *p.parents):
                    jobs_under[str(node)].add(key)
    for table in tables:
        problems.extend(table.problems)
        for row_no, col, ident in table.rows:
            if col == "patient_id":
                pid = ps.patient(ident)
                state["patient"][pid] = table.by_patient[ident]
                matched = pid in patients
            elif col == "study_uid":
                sid = ps.study(ident)
                state["study"][sid] = table.by_study[ident]
                matched = sid in studies
            else:
                keys = jobs_under.get(ident.rstrip(os.sep) or os.sep, set())
                for key in keys:
                    state["job"][key] = table.by_path[ident]
                matched = any(k in ok for k in keys)
            if not matched:
                what = {"patient_id": "patient", "study_uid": "study", "path": "path"}[col]
                problems.append(
                    f"{table.name} row {row_no}: names a {what} found in no prepared scan"
                )
    return problems


def assemble(
    out_dir: Path,
    config: PrepConfig,
    ps: Pseudonymizer,
    found: Discovery,
    tables: list[LabelTable],
    reused: int,
    processed: int,
) -> PrepareResult:
    """Labels, splits, the manifest and the reports from every finished job of ``out_dir``."""
    folder = PrepFolder(out_dir)
    state_dir = folder.state_dir
    records = _load_records(state_dir / folder.JOBS, JobRecord)
    private_jobs = _load_records(folder.private_dir / folder.JOBS, PrivateJobRecord)

    label_state_path = state_dir / folder.LABEL_STATE
    label_state: dict[str, dict[str, int]] = {"patient": {}, "study": {}, "job": {}}
    if label_state_path.exists():
        label_state.update(json.loads(label_state_path.read_text()))
    label_problems = _apply_labels(tables, ps, private_jobs, records, label_state)
    atomic_write_json(label_state_path, label_state)

    inputs_map: dict[str, str] = _read_inputs_map(folder)
    skipped = _discovery_skips(state_dir, ps, found, inputs_map)
    flagged: list[Problem] = []
    volumes = _labelled_volumes(
        records, private_jobs, label_state, ps, inputs_map, skipped, flagged
    )
    volumes, splits, patient_labels = _split(volumes, config, label_problems)
    rows = _manifest_rows(volumes, splits)
    _remove_orphan_slices(folder, {r.volume_id for r in records.values() if r.ok})
    n_rows = write_manifest(folder.manifest_file, rows)

    split_patients = {s: 0 for s in ("train", "validation", "test")}
    split_slices = dict(split_patients)
    split_labels: dict[str, dict[str, int]] = {s: {"0": 0, "1": 0} for s in split_patients}
    for p, split in splits.items():
        split_patients[split.value] += 1
        split_labels[split.value][str(next(iter(patient_labels[p])))] += 1
    for r in rows:
        split_slices[r.split] += 1
    counts = {
        "files_seen_this_run": found.files_seen,
        "volumes": len(volumes),
        "patients": len(splits),
        "slices": n_rows,
        "patients_per_split": split_patients,
        "patients_per_split_and_label": split_labels,
        "slices_per_split": split_slices,
        "kinds": {k: sum(1 for v in volumes if v.record.kind == k) for k in ("hu", "gray8")},
        "jobs_reused": reused,
        "jobs_processed": processed,
        "skipped": len(skipped),
        "flagged": len(flagged),
    }
    _write_reports(folder, config, counts, skipped, flagged, label_problems)
    _write_private_maps(folder, inputs_map, private_jobs, records)
    for problem in label_problems:
        skipped.append(Problem("labels", "labels", "label", problem))
    return PrepareResult(
        out_dir=out_dir,
        n_volumes=len(volumes),
        n_slices=n_rows,
        n_patients=len(splits),
        split_patients=split_patients,
        skipped=skipped,
        flagged=flagged,
        reused=reused,
        processed=processed,
    )


def _discovery_skips(
    state_dir: Path, ps: Pseudonymizer, found: Discovery, inputs_map: dict[str, str]
) -> list[Problem]:
    """Discovery's skips, accumulated across runs by reference (paths stay private)."""
    skips_path = state_dir / PrepFolder.SKIPS
    skip_state: dict[str, dict[str, str]] = (
        json.loads(skips_path.read_text()) if skips_path.exists() else {}
    )
    for s in found.skips:
        ref = ps.input_ref(s.path)
        skip_state[ref] = {"what": s.what, "reason": s.reason}
        inputs_map[ref] = s.path
    atomic_write_json(skips_path, skip_state)
    return [
        Problem(ref, inputs_map.get(ref, "?"), v["what"], v["reason"])
        for ref, v in skip_state.items()
    ]


def _labelled_volumes(
    records: dict[str, JobRecord],
    private_jobs: dict[str, PrivateJobRecord],
    label_state: dict[str, dict[str, int]],
    ps: Pseudonymizer,
    inputs_map: dict[str, str],
    skipped: list[Problem],
    flagged: list[Problem],
) -> list[LabelledVolume]:
    """The finished scans that have a label (job, study, patient or class folder, in that
    order); the rest go to ``skipped`` with their reason, flagged scans also to ``flagged``."""
    volumes: list[LabelledVolume] = []
    for key, rec in sorted(records.items()):
        priv = private_jobs.get(key)
        sources = list(priv.sources) if priv is not None else []
        where = _describe_sources(sources)
        inputs_map[rec.input_ref] = where
        for idx, reason in rec.file_skips:
            ref = ps.input_ref(sources[idx]) if idx < len(sources) else rec.input_ref
            inputs_map[ref] = sources[idx] if idx < len(sources) else where
            skipped.append(Problem(ref, inputs_map[ref], "file", reason))
        if not rec.ok:
            skipped.append(Problem(rec.input_ref, where, "scan", rec.reason or "?"))
            continue
        label = label_state["job"].get(key)
        if label is None and rec.study_id:
            label = label_state["study"].get(rec.study_id)
        if label is None:
            label = label_state["patient"].get(rec.patient_id)
        if label is None:
            label = rec.folder_label
        if label is None:
            skipped.append(
                Problem(
                    rec.input_ref,
                    where,
                    "scan",
                    "no label: not in any label CSV and not inside a class folder "
                    "(add it to --labels, or put it under e.g. COVID/ or non-COVID/)",
                )
            )
            continue
        if rec.flags:
            flagged.append(Problem(rec.input_ref, where, "scan", "; ".join(rec.flags)))
        volumes.append(LabelledVolume(rec, int(label)))
    return volumes


def _split(
    volumes: list[LabelledVolume], config: PrepConfig, label_problems: list[str]
) -> tuple[list[LabelledVolume], dict[str, Any], dict[str, set[int]]]:
    """Patients with conflicting labels are excluded; the rest are split by patient."""
    patient_labels: dict[str, set[int]] = defaultdict(set)
    for v in volumes:
        patient_labels[v.record.patient_id].add(v.label)
    conflicting = {p for p, labs in patient_labels.items() if len(labs) > 1}
    for p in sorted(conflicting):
        label_problems.append(f"patient {p} has scans labelled both 0 and 1: all excluded")
    volumes = [v for v in volumes if v.record.patient_id not in conflicting]
    splits = assign_splits(
        {p: next(iter(labs)) for p, labs in patient_labels.items() if p not in conflicting},
        fractions=config.split,
        seed=config.seed,
    )
    return volumes, splits, patient_labels


def _manifest_rows(volumes: list[LabelledVolume], splits: dict[str, Any]) -> list[SliceRow]:
    rows: list[SliceRow] = []
    for v in sorted(
        volumes,
        key=lambda v: (splits[v.record.patient_id].value, v.record.patient_id, v.record.volume_id),
    ):
        rec = v.record
        split = splits[rec.patient_id].value
        file = PrepFolder.slice_name(rec.volume_id)
        for i in range(rec.n_slices):
            pos = rec.positions_mm[i]
            rows.append(
                SliceRow(
                    patient_id=rec.patient_id,
                    volume_id=rec.volume_id,
                    split=split,
                    label=v.label,
                    file=file,
                    index=i,
                    source_slice=rec.source_slices[i],
                    position_mm=float("nan") if pos is None else float(pos),
                    kind=rec.kind,
                    unit_basis=rec.unit_basis,
                )
            )
    return rows


def _write_reports(
    folder: PrepFolder,
    config: PrepConfig,
    counts: dict[str, Any],
    skipped: list[Problem],
    flagged: list[Problem],
    label_problems: list[str],
) -> None:
    """``prep_report.json`` (counts and every skipped or flagged input, by reference) and
    ``dataset.json`` (the slice settings and the split)."""
    report = {
        "format_version": FORMAT_VERSION,
        "counts": counts,
        "skipped": [{"input": p.ref, "what": p.what, "reason": p.reason} for p in skipped],
        "flagged": [{"input": p.ref, "what": p.what, "reason": p.reason} for p in flagged],
        "label_problems": label_problems,
        "note": "inputs are named by reference; "
        f"{PrepFolder.PRIVATE}/{PrepFolder.INPUTS} maps references to paths",
    }
    atomic_write_json(folder.report_file, report)
    atomic_write_json(
        folder.dataset_file,
        {
            "format_version": FORMAT_VERSION,
            "slices": config.slices.as_dict(),
            "storage": "slices/<volume_id>.npy: uint8 (n, size, size); value/255 = window position",
            "split_fractions": list(config.split),
            "split_seed": config.seed,
            "patients": counts["patients"],
            "volumes": counts["volumes"],
            "slices_total": counts["slices"],
        },
    )


def _describe_sources(sources: list[str]) -> str:
    if not sources:
        return "?"
    if len(sources) == 1:
        return sources[0]
    parents = {str(Path(s).parent) for s in sources}
    return parents.pop() if len(parents) == 1 else f"{sources[0]} (+{len(sources) - 1} files)"


def _remove_orphan_slices(folder: PrepFolder, keep: set[str]) -> None:
    for p in folder.slice_files():
        if p.stem not in keep:
            p.unlink(missing_ok=True)


def _read_inputs_map(folder: PrepFolder) -> dict[str, str]:
    path = folder.inputs_file
    if not path.exists():
        return {}
    with path.open(newline="") as fh:
        return {r["input"]: r["path"] for r in csv.DictReader(fh)}


def _write_private_maps(
    folder: PrepFolder,
    inputs_map: dict[str, str],
    private_jobs: dict[str, PrivateJobRecord],
    records: dict[str, JobRecord],
) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["input", "path"])
    for ref, path in sorted(inputs_map.items()):
        w.writerow([ref, path])
    atomic_write_text(folder.inputs_file, buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patient_id", "volume_id", "source_patient_id", "source_study_uid", "source"])
    for key, rec in sorted(records.items()):
        if not rec.ok:
            continue
        priv = private_jobs.get(key) or PrivateJobRecord(kind="")
        w.writerow(
            [
                rec.patient_id,
                rec.volume_id,
                priv.patient_key or "",
                priv.study_key,
                _describe_sources(list(priv.sources)),
            ]
        )
    atomic_write_text(folder.pseudonym_map, buf.getvalue())
