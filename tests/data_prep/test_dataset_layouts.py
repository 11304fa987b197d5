"""Public dataset layouts prepare must accept (reproduced in shape: nothing can be downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from data_prep.manifest import read_manifest
from data_prep.pipeline import PrepConfig, prepare
from data_prep.synthetic.cohort import make_identities, patient_rng, write_dicom_series, write_nifti
from data_prep.synthetic.phantom import make_phantom
from data_prep.worker import SliceSettings

CONFIG = PrepConfig(slices=SliceSettings(image_size=32), workers=1)


def _phantom(i: int, positive: bool):
    burden = "severe" if positive else "none"
    return make_phantom(
        patient_rng(21, i), n_slices=10, matrix=40, positive=positive, burden=burden
    )


def test_mosmeddata_layout_labels_come_from_ct_folders(tmp_path):
    studies = tmp_path / "MosMedData" / "studies"
    for i, folder in enumerate(["CT-0", "CT-0", "CT-1", "CT-3"]):
        write_nifti(_phantom(i, folder != "CT-0"), studies / folder / f"study_{i:04d}.nii.gz")
    res = prepare([tmp_path / "MosMedData"], tmp_path / "prep", config=CONFIG)
    assert res.n_patients == 4
    rows = read_manifest(tmp_path / "prep" / "manifest.csv")
    assert sorted({(r.patient_id, r.label) for r in rows}, key=lambda x: x[1])[0][1] == 0
    assert sum({r.patient_id: r.label for r in rows}.values()) == 2


def test_midrc_layout_chooses_the_finest_axial_series_of_each_study(tmp_path):
    ident = make_identities(9, 1)[0]
    study_dir = tmp_path / "MIDRC" / ident.patient_id / "study1"
    ph = _phantom(0, True)
    write_dicom_series(ph, study_dir / "thin", identity=ident, add_localizer=True)
    # a second, thicker reconstruction of the same study: every other slice, its own series UID
    thick = study_dir / "thick"
    thick.mkdir()
    new_series = pydicom.uid.generate_uid()
    for i, p in enumerate(sorted((study_dir / "thin").iterdir())):
        ds = pydicom.dcmread(p)
        if int(ds.InstanceNumber) % 2:
            continue
        ds.SeriesInstanceUID = new_series
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(thick / f"{i}.dcm")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"study_uid,label\n{ident.study_instance_uid},1\n")
    res = prepare([tmp_path / "MIDRC"], tmp_path / "prep", config=CONFIG, labels=[labels])
    assert res.n_volumes == 1
    reasons = {Path(p.path).name: p.reason for p in res.skipped}
    assert "another axial CT series of the same study was chosen" in reasons["thick"]
    assert "localizer" in reasons["thin_localizer"]
    report = json.loads((tmp_path / "prep" / "prep_report.json").read_text())
    assert report["counts"]["patients"] == 1
    assert ident.study_instance_uid not in json.dumps(report)


@pytest.mark.parametrize("with_extension", [True, False])
def test_dicom_files_with_or_without_extension_are_found(tmp_path, with_extension):
    ident = make_identities(4, 1)[0]
    write_dicom_series(
        _phantom(1, False),
        tmp_path / "in" / "a" / "b" / "c",
        identity=ident,
        with_extension=with_extension,
    )
    labels = tmp_path / "labels.csv"
    labels.write_text(f"patient_id,label\n{ident.patient_id},0\n")
    res = prepare([tmp_path / "in"], tmp_path / "prep", config=CONFIG, labels=[labels])
    assert res.n_volumes == 1 and res.n_slices > 0


def test_labels_by_path_apply_to_scans_under_that_folder(tmp_path):
    for i in range(2):
        write_nifti(_phantom(i, bool(i)), tmp_path / "scans" / f"site{i}" / "scan.nii.gz")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nscans/site0,negative\nscans/site1/scan.nii.gz,positive\n")
    res = prepare([tmp_path / "scans"], tmp_path / "prep", config=CONFIG, labels=[labels])
    rows = read_manifest(tmp_path / "prep" / "manifest.csv")
    assert res.n_volumes == 2 and sorted({r.label for r in rows}) == [0, 1]
