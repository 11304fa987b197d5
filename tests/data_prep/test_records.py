"""A job's two records: the public one holds no identifier, the private one holds them; both
read back, also as older versions wrote them."""

from __future__ import annotations

import dataclasses

import pytest

from data_prep.deid import UnitBasis
from data_prep.records import JobRecord, JobStatus, PrivateJobRecord


def test_a_record_reads_back_as_it_was_written():
    rec = JobRecord(
        status=JobStatus.OK,
        job="k1",
        input_ref="in-k1",
        kind="hu",
        volume_id="V-1",
        patient_id="P-1",
        n_slices=2,
        source_slices=(4, 5),
        positions_mm=(-10.0, None),
        spacing_mm=(1.0, 0.7, 0.7),
        flags=("gantry tilt",),
        file_skips=((3, "truncated"),),
        unit_basis=UnitBasis.DICOM_PATIENT_ID.value,
    )
    data = rec.to_json()
    assert data["status"] == "ok"
    assert JobRecord.from_json(data) == rec
    priv = PrivateJobRecord(
        kind="dicom", sources=("/a/1.dcm",), patient_key="MRN1", study_key="1.2"
    )
    assert PrivateJobRecord.from_json(priv.to_json()) == priv


def test_the_public_record_has_no_field_for_an_identifier_or_a_path():
    public = {f.name for f in dataclasses.fields(JobRecord)}
    private = {f.name for f in dataclasses.fields(PrivateJobRecord)}
    assert {"patient_key", "study_key", "sources"} <= private
    assert not public & {"patient_key", "study_key", "sources", "path", "series_key"}


def test_an_older_record_takes_defaults_and_a_foreign_file_is_refused():
    old = {"status": "skipped", "reason": "not a CT", "file_skips": [], "input_ref": "in-2"}
    rec = JobRecord.from_json(old)
    assert not rec.ok and rec.reason == "not a CT"
    assert rec.unit_basis == UnitBasis.UNKNOWN.value
    for bad in ([1, 2], {"status": "done"}, {"status": "ok", "n_slices": "x", "file_skips": [1]}):
        with pytest.raises(ValueError):
            JobRecord.from_json(bad)
    with pytest.raises(ValueError):
        PrivateJobRecord.from_json({"sources": []})  # no kind
