"""One job: a readable scan gives its slices and a public record; any failure of one input is
a reason, never a crash of the batch, and the identifier comes back apart from the record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep import worker
from data_prep.deid import Pseudonymizer
from data_prep.discover import discover
from data_prep.prepared import PrepFolder
from data_prep.settings import SliceSettings

PS = Pseudonymizer(b"w" * 32)
SETTINGS = SliceSettings(image_size=32)


def _nifti_job(cohort: Path):
    return next(j for j in discover([cohort / "nifti"]).jobs)


def test_a_scan_becomes_slices_and_a_record_without_its_identifier(cohort: Path, tmp_path: Path):
    job = _nifti_job(cohort)
    out = worker.process_job(job, settings=SETTINGS, out_dir=tmp_path, pseudonymizer=PS)
    rec = out.record
    assert rec.ok and out.patient_key == job.patient_key
    assert rec.patient_id == PS.patient(job.patient_key)
    slices = np.load(PrepFolder(tmp_path).slice_file(rec.volume_id))
    assert slices.shape == (rec.n_slices, 32, 32) and slices.dtype == np.uint8
    assert len(rec.source_slices) == rec.n_slices == len(rec.positions_mm)
    assert job.patient_key not in json.dumps(rec.to_json())


def test_an_unreadable_file_is_a_skip_with_its_reason(tmp_path: Path):
    bad = tmp_path / "x.nii"
    bad.write_bytes(b"not nifti at all" * 40)
    job = discover([bad]).jobs[0]
    out = worker.process_job(job, settings=SETTINGS, out_dir=tmp_path, pseudonymizer=PS)
    assert not out.record.ok and out.record.reason and out.patient_key is None
    assert not PrepFolder(tmp_path).slice_files()


@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (MemoryError(), "scan too large for memory"),
        (type("PanicException", (BaseException,), {})("bad huffman"), "a decoder failed on it"),
    ],
)
def test_a_decoder_failure_of_any_kind_is_a_skip(cohort, tmp_path, monkeypatch, raised, reason):
    def explode(*_args, **_kwargs):
        raise raised

    monkeypatch.setattr(worker, "read_scan", explode)
    out = worker.process_job(
        _nifti_job(cohort), settings=SETTINGS, out_dir=tmp_path, pseudonymizer=PS
    )
    assert not out.record.ok and out.record.reason.startswith(reason)


def test_an_interrupt_is_not_swallowed(cohort, tmp_path, monkeypatch):
    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(worker, "read_scan", interrupt)
    with pytest.raises(KeyboardInterrupt):
        worker.process_job(
            _nifti_job(cohort), settings=SETTINGS, out_dir=tmp_path, pseudonymizer=PS
        )
