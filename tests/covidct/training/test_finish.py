"""Finishing a run: what the report counts about the training units, and a re-audit that needs
a finished run. (The whole finish, end to end: tests/covidct/test_train.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidct.data.units import DataError, Units
from covidct.features.attenuation import AttenuationSpec
from covidct.training.finish import audit_run, count_bases, features_record, max_units_per_patient


def _units() -> Units:
    return Units(
        ids=["a/1", "a/2", "b/1", "c/1"],
        patients=["a", "a", "b", "c"],
        labels=np.zeros(4, np.float32),
        slices=[[("f", 0)], [("f", 1)], [("g", 0)], [("h", 0)]],
        bases=["dicom_patient_id", "dicom_patient_id", "nifti_file", "dicom_patient_id"],
    )


def test_the_report_counts_patients_by_basis_and_the_most_units_one_patient_has():
    assert count_bases(_units()) == {"dicom_patient_id": 2, "nifti_file": 1}
    assert max_units_per_patient(_units()) == 2  # slice units: patient a has two


def test_the_features_record_names_the_transform_and_its_cache(prep: Path):
    assert features_record(prep, None) is None
    record = features_record(prep, AttenuationSpec())
    assert record is not None and record["transform"] == AttenuationSpec().transform_id
    assert len(record["cache_key"]) >= 8


def test_a_re_audit_needs_a_finished_run(tmp_path: Path):
    with pytest.raises(DataError, match="not a finished run"):
        audit_run(tmp_path)
