"""Assembly from job records alone: labels by precedence, conflicting patients excluded, skips
reported by reference, identifiers only in private/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_prep.assemble import assemble
from data_prep.atomic import atomic_save_npy, atomic_write_json
from data_prep.deid import Pseudonymizer
from data_prep.discover import Discovery
from data_prep.labels import LabelTable
from data_prep.manifest import read_manifest
from data_prep.prepared import PrepFolder
from data_prep.records import JobRecord, JobStatus, PrivateJobRecord
from data_prep.settings import PrepConfig

PS = Pseudonymizer(b"k" * 32)


def _job(folder: PrepFolder, key: str, patient: str, *, label: int | None, n: int = 2) -> None:
    volume = PS.volume(key)
    atomic_save_npy(folder.slice_file(volume), np.zeros((n, 8, 8), np.uint8))
    record = JobRecord(
        status=JobStatus.OK,
        job=key,
        input_ref=f"in-{key}",
        kind="hu",
        volume_id=volume,
        patient_id=PS.patient(patient),
        folder_label=label,
        n_slices=n,
        source_slices=tuple(range(n)),
        positions_mm=(None,) * n,
    )
    atomic_write_json(folder.job_record(key), record.to_json())
    private = PrivateJobRecord(kind="nifti", sources=(f"/data/{patient}.nii",), patient_key=patient)
    atomic_write_json(folder.private_job_record(key), private.to_json())


def test_manifest_report_and_private_map_come_from_the_records(tmp_path: Path):
    folder = PrepFolder(tmp_path / "prep")
    for i in range(6):
        _job(folder, f"k{i}", f"MRN-{i}", label=i % 2)
    _job(folder, "k6", "MRN-0", label=1)  # a second scan of MRN-0, labelled otherwise
    _job(folder, "k7", "MRN-7", label=None)  # no label anywhere
    skipped = JobRecord.skipped("not a CT").saved_as(job="k8", input_ref="in-k8")
    atomic_write_json(folder.job_record("k8"), skipped.to_json())
    atomic_write_json(
        folder.private_job_record("k8"), PrivateJobRecord(kind="dicom", sources=("/x",)).to_json()
    )
    labels = LabelTable(
        name="labels.csv", by_patient={"MRN-5": 0}, rows=[(2, "patient_id", "MRN-5")]
    )

    result = assemble(folder.path, PrepConfig(seed=1), PS, Discovery(), [labels], 0, 9)

    rows = read_manifest(folder.manifest_file)
    patients = {r.patient_id: r.label for r in rows}
    assert PS.patient("MRN-0") not in patients  # labelled both 0 and 1: excluded, and said
    assert patients[PS.patient("MRN-5")] == 0  # the label CSV comes before the class folder
    assert PS.patient("MRN-7") not in patients
    assert result.n_patients == 5 and result.n_slices == 10  # MRN-1..5, two slices each
    reasons = {p.ref: p.reason for p in result.skipped}
    assert reasons["in-k8"] == "not a CT" and reasons["in-k7"].startswith("no label")
    assert any("labelled both 0 and 1" in p.reason for p in result.skipped)

    public = folder.manifest_file.read_text() + folder.report_file.read_text()
    public += folder.dataset_file.read_text()
    assert "MRN" not in public and "/data/" not in public
    pmap = folder.pseudonym_map.read_text()
    assert "MRN-1" in pmap and PS.patient("MRN-1") in pmap
    report = json.loads(folder.report_file.read_text())
    assert {s["input"] for s in report["skipped"]} >= {"in-k7", "in-k8"}
