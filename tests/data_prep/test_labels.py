from pathlib import Path

import pytest

from data_prep.errors import LabelError
from data_prep.labels import class_folder_label, folder_label, parse_label, read_label_csv


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("CT_COVID", 1),
        ("CT_NonCOVID", 0),
        ("COVID", 1),
        ("non-COVID", 0),
        ("CT-0", 0),
        ("CT-1", 1),
        ("CT-4", 1),
        ("study_0001", None),
    ],
)
def test_public_dataset_class_folder_names(name, label):
    assert class_folder_label(name) == label


def test_folder_label_uses_nearest_class_folder(tmp_path):
    root = tmp_path / "MosMedData" / "studies"
    assert folder_label(root / "CT-0" / "study_0001.nii.gz", root) == 0
    assert folder_label(root / "CT-3" / "study_0301.nii.gz", root) == 1
    assert folder_label(root / "misc" / "x.nii.gz", root) is None


@pytest.mark.parametrize(
    ("text", "label"), [("1", 1), ("0", 0), ("COVID", 1), ("non-covid", 0), ("maybe", None)]
)
def test_parse_label_spellings(text, label):
    assert parse_label(text) == label


def test_label_csv_reports_bad_rows_by_number_without_identifiers(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("patient_id,label\nMRN111,1\nMRN222,perhaps\n,0\nMRN111,0\nMRN333,negative\n")
    table = read_label_csv(csv)
    assert table.by_patient == {"MRN111": 1, "MRN333": 0}
    text = " ".join(table.problems)
    assert "row 3" in text and "row 4" in text and "row 5" in text
    assert "MRN" not in text


def test_label_csv_without_required_columns_is_an_error(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("name,diagnosis\nx,1\n")
    with pytest.raises(LabelError, match="needs a 'label' column"):
        read_label_csv(csv)


def test_label_csv_paths_are_resolved_relative_to_the_csv(tmp_path):
    (tmp_path / "sub").mkdir()
    csv = tmp_path / "sub" / "labels.csv"
    csv.write_text("path,label\n../scans/a.nii.gz,1\n")
    table = read_label_csv(csv)
    assert table.by_path == {str((tmp_path / "scans" / "a.nii.gz").resolve()): 1}
    assert Path(next(iter(table.by_path))).is_absolute()
