"""Pseudonyms: keyed, stable, unlinkable without the key, and the key kept private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from data_prep.deid import Pseudonymizer, UnitBasis, load_or_create_key
from data_prep.prepared import PrepFolder


def test_the_key_is_created_once_owner_only_and_reused(tmp_path: Path):
    private = tmp_path / PrepFolder.PRIVATE
    key = load_or_create_key(private)
    assert len(key) == 32 and load_or_create_key(private) == key
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert stat.S_IMODE((private / PrepFolder.KEY).stat().st_mode) == 0o600
    (private / PrepFolder.KEY).write_text("abcd")
    with pytest.raises(ValueError, match="too short"):
        load_or_create_key(private)


def test_pseudonyms_are_stable_per_key_differ_between_keys_and_namespaces():
    a, b = Pseudonymizer(b"k" * 32), Pseudonymizer(b"q" * 32)
    assert a.patient("12345") == a.patient("12345")
    assert a.patient("12345") != b.patient("12345")  # another site cannot link them
    assert a.patient("12345")[2:] != a.study("12345")[2:]  # a study id is not a patient id
    assert a.patient("12345").startswith("P-") and len(a.patient("12345")) == 18
    assert a.volume("v").startswith("V-") and a.input_ref("/x").startswith("in-")
    assert "12345" not in a.patient("12345")


def test_only_a_dicom_patient_id_names_a_person():
    assert [u for u in UnitBasis if u.is_person] == [UnitBasis.DICOM_PATIENT_ID]
    assert all(u.covers for u in UnitBasis)
