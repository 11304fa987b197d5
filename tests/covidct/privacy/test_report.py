"""The epsilon report: notes, JSON round trip, plain-language markdown, atomic files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from covidct.privacy.accounting import Accountant, Sampling
from covidct.privacy.report import (
    PrivacyReport,
    ReportFormatError,
    build_report,
    group_privacy,
    membership_bounds,
    report_from_json,
    report_to_json,
    report_to_markdown,
    write_report,
)

# Numbers of STACK.md's reference run; no accounting is run here (the statement is a stand-in).
STATEMENT = (
    "covidct: this run used Poisson sampling.\n\n"
    "Example-level DP with add-or-remove-one adjacency at delta = 1e-05 computed with\n"
    "RDP accounting:\n"
    "    Epsilon assuming Poisson sampling (*):                      4.745\n"
)


def _kwargs(**change: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "dp": True,
        "target_epsilon": 5.0,
        "epsilon": 4.745154466343162,
        "delta": 1e-5,
        "noise_multiplier": 1.1,
        "sampling_rate": 0.032,
        "expected_batch_size": 64.0,
        "steps": 625,
        "epochs": 20.0,
        "clip_norm": 1.0,
        "privacy_unit": "patient",
        "max_slices_per_unit": 16,
        "n_units": 2000,
        "accountant": Accountant.RDP,
        "sampling": Sampling.POISSON,
        "epsilon_per_epoch": [1.25, 2.5, 4.745154466343162],
        "tf_privacy_statement": STATEMENT,
    }
    return {**base, **change}


def _report(**change: Any) -> PrivacyReport:
    return build_report(PrivacyReport(**_kwargs(**change)))


REQUIRED_KEYS = {
    "epsilon",
    "delta",
    "noise_multiplier",
    "sampling_rate",
    "steps",
    "clip_norm",
    "privacy_unit",
    "accountant",
    "sampling",
    "epsilon_per_epoch",
    "tf_privacy_statement",
}


def test_json_round_trips_and_has_the_required_keys() -> None:
    report = _report()
    d = report_to_json(report)
    assert d.keys() >= REQUIRED_KEYS
    assert d["accountant"] == "rdp" and d["sampling"] == "poisson"
    text = json.dumps(d, allow_nan=False)  # strictly valid JSON
    assert report_from_json(json.loads(text)) == report


def test_non_private_report_stores_infinity_as_string_and_round_trips() -> None:
    report = _report(dp=False, target_epsilon=None, noise_multiplier=0.0, epsilon=math.inf)
    d = report_to_json(report)
    assert d["epsilon"] == "inf" and d["target_epsilon"] is None
    back = report_from_json(json.loads(json.dumps(d, allow_nan=False)))
    assert back == report and back.epsilon == math.inf
    assert any("No privacy guarantee" in n for n in back.notes)


def test_non_private_report_epsilon_is_infinite_whatever_is_passed() -> None:
    assert _report(dp=False, epsilon=3.0).epsilon == math.inf


def test_private_report_with_infinite_epsilon_is_rejected() -> None:
    with pytest.raises(ReportFormatError, match="finite epsilon"):
        _report(epsilon=math.inf)


def test_unknown_privacy_unit_is_rejected() -> None:
    with pytest.raises(ReportFormatError, match="privacy unit"):
        _report(privacy_unit="study")


def test_reading_a_report_with_missing_or_unknown_keys_fails_clearly() -> None:
    d = report_to_json(_report())
    del d["delta"]
    d["extra"] = 1
    with pytest.raises(ReportFormatError, match=r"missing \['delta'\], unknown \['extra'\]"):
        report_from_json(d)
    with pytest.raises(ReportFormatError, match="format"):
        report_from_json({**report_to_json(_report()), "format": "other/9"})
    with pytest.raises(ReportFormatError, match="bad value"):
        report_from_json({**report_to_json(_report()), "accountant": "moments"})


def test_notes_carry_the_sampling_assumption() -> None:
    poisson = _report().notes
    shuffled = _report(sampling=Sampling.SHUFFLED).notes
    assert any("Poisson sampling" in n and "proven upper bound" in n for n in poisson)
    assert any("shuffled" in n and "not a proven bound" in n for n in shuffled)
    assert "**Caution:**" in report_to_markdown(_report(sampling=Sampling.SHUFFLED))
    assert "**Caution:**" not in report_to_markdown(_report())


def test_patient_unit_note_says_all_slices_are_covered() -> None:
    notes = " ".join(_report().notes)
    assert "Privacy unit: the patient" in notes and "k = 16" in notes


def test_slice_unit_report_carries_the_group_privacy_note() -> None:
    report = _report(privacy_unit="slice", epsilon=0.5, epsilon_per_epoch=[0.5])
    note = next(n for n in report.notes if n.startswith("Privacy unit: the slice"))
    assert "does NOT cover a patient" in note
    assert "m * epsilon" in note and "e^((m-1) epsilon)" in note
    # m = 16: epsilon 16 * 0.5 = 8; delta 16 * e^(15 * 0.5) * 1e-5 = 0.289.
    assert "epsilon ~ 8" in note and "delta ~ 0.289" in note
    markdown = report_to_markdown(report)
    assert "not a patient" in markdown


def test_group_privacy_matches_hand_computation_and_caps_delta() -> None:
    eps, delta = group_privacy(epsilon=0.5, delta=1e-5, group_size=16)
    assert eps == 8.0
    assert delta == pytest.approx(16 * math.exp(7.5) * 1e-5)
    assert group_privacy(epsilon=4.7, delta=1e-5, group_size=16)[1] == 1.0
    assert group_privacy(epsilon=1.0, delta=1e-5, group_size=1) == (1.0, 1e-5)


def test_membership_bounds_match_hand_computation() -> None:
    none = membership_bounds(epsilon=0.0, delta=0.0)
    assert (none.advantage, none.accuracy, none.odds_factor) == (0.0, 0.5, 1.0)
    ln3 = membership_bounds(epsilon=math.log(3), delta=0.0)
    assert ln3.advantage == pytest.approx(0.5)  # (3 - 1) / (3 + 1)
    assert ln3.accuracy == pytest.approx(0.75)  # 3 / (3 + 1)
    with_delta = membership_bounds(epsilon=math.log(3), delta=0.01)
    assert with_delta.advantage == pytest.approx((3 - 1 + 0.02) / 4)
    assert with_delta.accuracy == pytest.approx((3 + 0.01) / 4)
    huge = membership_bounds(epsilon=1e4, delta=1e-5)
    assert huge.accuracy == 1.0 and huge.odds_factor == math.inf


def test_markdown_starts_in_plain_language_then_numbers_notes_and_statement() -> None:
    report = _report()
    md = report_to_markdown(report)
    plain = md.index("## What this means, in plain language")
    numbers = md.index("## The numbers")
    notes = md.index("## Assumptions and caveats")
    cross = md.index("## Cross-check: tensorflow-privacy's statement")
    assert plain < numbers < notes < cross
    head = md[plain:numbers]
    # e^4.745 = 115.0; accuracy <= (115.0 + 1e-5) / 116.0 = 99.1 %; advantage 0.983.
    assert "99.1%" in head and "0.983" in head and "115" in head
    assert "patient" in head and "2000" in head
    body = md[numbers:]
    for number in ("4.74515", "1e-05", "1.1", "0.032", "625", "64", "| 3 | 4.74515 |"):
        assert number in body
    assert STATEMENT.strip() in md  # verbatim


def test_markdown_of_non_private_run_says_there_is_no_bound() -> None:
    md = report_to_markdown(_report(dp=False, noise_multiplier=0.0, tf_privacy_statement=""))
    assert "without differential privacy" in md
    assert "| epsilon (achieved) | inf |" in md
    assert "Cross-check" not in md


def test_write_report_writes_both_files(tmp_path: Path) -> None:
    report = _report()
    run_dir = tmp_path / "runs" / "r1"
    write_report(report, run_dir)
    assert report_from_json(json.loads((run_dir / "privacy_report.json").read_text())) == report
    assert (run_dir / "privacy_report.md").read_text() == report_to_markdown(report)
    assert sorted(p.name for p in run_dir.iterdir()) == ["privacy_report.json", "privacy_report.md"]


# ---- what the guarantee rests on, and what the run releases beside it ------------------------


def test_the_report_says_the_guarantee_rests_on_secret_randomness_and_names_its_generator():
    from covidct.privacy.secret import GENERATOR

    report = _report(randomness=GENERATOR)
    note = next(n for n in report.notes if "randomness" in n)
    assert "secret" in note and "SHAKE-256" in note and "operating system" in note
    assert "never written" in note and "new key" in note
    assert note in report_to_markdown(report)
    back = report_from_json(report_to_json(report))
    assert back.randomness == GENERATOR and back == report


def test_identity_fallbacks_are_counted_and_say_what_the_guarantee_covers():
    all_persons = _report(unit_bases={"dicom_patient_id": 2000})
    assert any("All 2000 training patients were identified" in n for n in all_persons.notes)
    mixed = _report(unit_bases={"dicom_patient_id": 1500, "nifti_file": 400, "single_image": 100})
    note = next(n for n in mixed.notes if "fallbacks" in n)
    assert note.startswith("Only 1500 of the 2000 training patients")
    assert "400 x a NIfTI file" in note and "100 x one slice image" in note
    assert "not necessarily the person" in note and "group privacy" in note
    none = _report(unit_bases={"dicom_study": 2000})
    assert any(n.startswith("None of the 2000") for n in none.notes)
    assert report_from_json(report_to_json(mixed)).unit_bases == mixed.unit_bases


def test_an_early_stop_counts_every_planned_step_and_says_so():
    report = _report(steps=625, steps_taken=300)
    note = next(n for n in report.notes if "stopped early" in n)
    assert "300 of the 625 planned steps" in note and "not part of the mechanism" in note
    assert "| steps run (early stop) | 300 |" in report_to_markdown(report)
    assert not any("stopped early" in n for n in _report().notes)


def test_what_is_released_outside_the_guarantee_is_listed():
    report = _report(released=["the number of training units (N = 2000)"])
    note = next(n for n in report.notes if n.startswith("Published without noise"))
    assert "N = 2000" in note


def test_a_report_written_before_these_fields_still_reads():
    d = report_to_json(_report())
    for key in ("steps_taken", "randomness", "unit_bases", "released"):
        del d[key]
    back = report_from_json(d)
    assert back.randomness == "" and back.unit_bases == {} and back.steps_taken is None
