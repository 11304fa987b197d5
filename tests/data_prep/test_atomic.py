"""Atomic writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from data_prep import atomic
from data_prep.atomic import atomic_save_npy, atomic_write_bytes, atomic_write_json


def test_a_write_replaces_the_file_whole_with_the_mode_asked_for(tmp_path: Path):
    path = tmp_path / "sub" / "key"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["key"]  # no temporary file left


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "data.json"
    atomic_write_json(path, {"v": 1})

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(path, {"v": 2})
    assert path.read_text().strip() == '{\n  "v": 1\n}'
    assert os.listdir(tmp_path) == ["data.json"]


def test_arrays_are_saved_without_pickle_and_load_back(tmp_path: Path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    atomic_save_npy(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy", allow_pickle=False), a)
