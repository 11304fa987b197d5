"""A prepared folder holds exactly the files ``PrepFolder`` names, where it names them."""

from __future__ import annotations

from pathlib import Path

from data_prep.manifest import read_manifest
from data_prep.prepared import PrepFolder


def test_prepare_writes_what_prepfolder_names_and_nothing_else(prep: Path):
    folder = PrepFolder(prep)
    top = {p.name for p in prep.iterdir()}
    known = {
        PrepFolder.DATASET,
        PrepFolder.MANIFEST,
        PrepFolder.REPORT,
        PrepFolder.SLICES,
        PrepFolder.FEATURES,
        PrepFolder.PRIVATE,
        PrepFolder.STATE,
    }
    assert top <= known and top >= known - {PrepFolder.FEATURES}
    assert folder.dataset()["slices"]["image_size"] == 32
    private = {p.name for p in folder.private_dir.iterdir()}
    assert private == {PrepFolder.KEY, PrepFolder.PSEUDONYM_MAP, PrepFolder.INPUTS, PrepFolder.JOBS}
    rows = read_manifest(folder.manifest_file)
    assert {r.file for r in rows} == {PrepFolder.slice_name(r.volume_id) for r in rows}
    assert {folder.slice_file(r.volume_id) for r in rows} == set(folder.slice_files())
    jobs = list((folder.state_dir / PrepFolder.JOBS).glob("*.json"))
    assert jobs and all(folder.private_job_record(p.stem).is_file() for p in jobs)
    assert folder.job_record(jobs[0].stem) == jobs[0]
