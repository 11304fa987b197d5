"""Discovery: which scans lie under the inputs, grouped into jobs, and what was left out and why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.deid import UnitBasis
from data_prep.discover import JobKind, discover


def test_one_job_per_scan_with_the_patient_it_belongs_to(cohort: Path):
    found = discover([cohort])
    ids = {i["patient_id"] for i in json.loads((cohort / "identities.json").read_text())}
    assert {j.patient_key for j in found.jobs} == ids  # 12 patients, one scan each
    assert len(found.jobs) == len(ids)
    kinds = {j.kind for j in found.jobs}
    assert kinds == {JobKind.DICOM, JobKind.NIFTI}
    for job in found.jobs:
        if job.kind == JobKind.DICOM:
            assert job.unit_basis is UnitBasis.DICOM_PATIENT_ID and len(job.sources) == 8
            assert all(h.patient_id == job.patient_key for h in job.headers)
        else:
            assert job.unit_basis is UnitBasis.NIFTI_FILE and len(job.sources) == 1
    sources = [s for j in found.jobs for s in j.sources]
    assert len(sources) == len(set(sources))  # no file in two jobs
    # the localizers are left out with a reason
    assert found.skips and all("localizer" in s.reason for s in found.skips)


def test_missing_and_empty_inputs_are_skips_and_the_output_folder_is_not_read(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "in" / "prep"
    out.mkdir(parents=True)
    (out / "stray.dcm").write_bytes(b"x" * 200)
    found = discover([tmp_path / "missing", tmp_path / "empty", tmp_path / "in"], exclude=out)
    reasons = {Path(s.path).name: s.reason for s in found.skips}
    assert reasons["missing"] == "does not exist"
    assert reasons["empty"].startswith("empty")
    assert found.jobs == [] and found.files_seen == 0


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(path)


def test_slice_images_are_grouped_by_folder_by_pattern_or_each_alone(tmp_path: Path):
    for i in (1, 2, 10):
        _png(tmp_path / "a" / "COVID" / "patient7" / f"s{i}.png")
    _png(tmp_path / "b" / "non-COVID" / "loose1.png")
    _png(tmp_path / "b" / "non-COVID" / "loose2.png")
    for name in ("p1_1.png", "p1_2.png", "p2_1.png"):
        _png(tmp_path / "c" / "COVID" / name)

    by_folder = discover([tmp_path / "a"]).jobs
    assert len(by_folder) == 1 and by_folder[0].unit_basis is UnitBasis.IMAGE_FOLDER
    assert [Path(s).name for s in by_folder[0].sources] == ["s1.png", "s2.png", "s10.png"]
    assert by_folder[0].folder_label == 1

    loose = discover([tmp_path / "b"])
    assert len(loose.jobs) == 2 and {j.folder_label for j in loose.jobs} == {0}
    assert all(j.unit_basis is UnitBasis.SINGLE_IMAGE for j in loose.jobs)
    assert "its own patient" in loose.skips[0].reason  # the split cannot keep them together

    by_pattern = discover([tmp_path / "c"], image_patient_regex=r"^(p\d+)_").jobs
    assert sorted(len(j.sources) for j in by_pattern) == [1, 2]
    assert all(j.unit_basis is UnitBasis.IMAGE_PATTERN for j in by_pattern)
