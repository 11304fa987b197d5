"""covidct report: terminal tables, model cards without identifiers, sweep HTML, intervals."""

from __future__ import annotations

import json

import pytest

from covidct.cli import main
from covidct.model_card import auc_interval, wilson_interval
from covidct.train import train
from covidct.train_config import TrainConfig
from data_prep.pipeline import PrepConfig, prepare
from data_prep.synthetic.cohort import CohortFormat, SynthConfig, write_cohort
from data_prep.worker import SliceSettings
from tests.identity import identity_leaks


def test_wilson_interval_matches_published_values():
    lo, hi = wilson_interval(8, 10)  # Newcombe (1998), table I: 0.4902-0.9433
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) is None
    lo, hi = wilson_interval(0, 5)
    assert lo == 0.0 and 0.4 < hi < 0.5


def test_auc_interval_is_hanley_mcneil_and_never_certain_at_the_edge():
    lo, hi = auc_interval(0.8, 50, 50)
    # Hanley & McNeil (1982) standard error for A = 0.8, 50 + 50 cases: 0.0445
    assert (hi - lo) / (2 * 1.96) == pytest.approx(0.0445, abs=5e-4)
    lo, hi = auc_interval(1.0, 3, 3)
    assert hi == 1.0 and lo < 0.85  # 6 patients cannot prove perfection
    assert auc_interval(0.7, 0, 5) is None


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory):
    """A tiny DP run on a mixed DICOM/NIfTI cohort whose headers carry synthetic identities."""
    root = tmp_path_factory.mktemp("card")
    cohort = root / "cohort"
    write_cohort(
        cohort,
        SynthConfig(
            n_patients=20, n_slices=4, matrix=32, seed=11, formats=CohortFormat.MIXED, workers=1
        ),
    )
    prepare(
        [cohort],
        root / "prep",
        config=PrepConfig(slices=SliceSettings(image_size=32), workers=1),
        labels=[cohort / "labels.csv"],
    )
    config = TrainConfig(epochs=1, batch_size=4, max_slices_per_unit=2, chunk_units=4)
    run = train(root / "prep", config=config, target_epsilon=3.0, runs_dir=root, run_id="r")
    return run, cohort, json.loads((cohort / "identities.json").read_text())


def test_model_card_holds_every_section_and_no_identifying_value(dicom_run, tmp_path, capsys):
    result, cohort, identities = dicom_run
    md, page = tmp_path / "card.md", tmp_path / "card.html"
    run = result.run_dir
    assert main(["report", str(run), "--markdown", str(md), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    for heading in ("Privacy", "Test metrics, patient level", "Membership-inference audit"):
        assert heading in out
    card = md.read_text()
    for section in (
        "## Intended use",
        "Not a medical device",
        "## Data (counts only; no identifiers)",
        "## Privacy guarantee",
        "## Test metrics, patient level (95% intervals)",
        "Empirical audit",
        "## Limitations",
    ):
        assert section in card, section
    limitations = card[card.index("## Limitations") :]
    assert "stayed secret" in limitations and "SHAKE-256" in limitations
    # a mixed DICOM / NIfTI cohort: the NIfTI "patients" are file names, and the card says so
    assert "identified by a DICOM PatientID" in card and "a NIfTI file" in card
    assert "estimate from one model" in card and "epsilon proven" not in card
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html and "http" not in html

    for text in (card, html, out):
        assert not identity_leaks(text, identities, (str(cohort), cohort.name))


def test_sweep_html_embeds_its_plots(prep, tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", "--data", str(prep), "--epsilons", "inf", "--batch-sizes", "8"]
    argv += ["--out", str(out), "--no-progress", "--set", "train.epochs=1"]
    assert main(argv) == 0
    page = tmp_path / "sweep.html"
    assert main(["report", str(out), "--html", str(page)]) == 0
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 3


def test_report_of_a_folder_that_is_neither_says_what_to_give(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a finished run" in err and "sweep" in err
