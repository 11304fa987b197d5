"""The epsilon report of a training run: what was guaranteed, to whom, and on what assumptions.

Every run writes ``privacy_report.json`` (for programs: the ledger, the dashboard) and
``privacy_report.md`` (for a privacy officer: plain language first, then the numbers, the
caveats, and tensorflow-privacy's own statement as an independent cross-check).

The plain-language reading is the hypothesis-testing one (Wasserman & Zhou 2010; Kairouz, Oh &
Viswanath 2015; Balle et al. 2020, "Hypothesis Testing Interpretations and Renyi Differential
Privacy"): for an (epsilon, delta)-DP training run, any test of "this patient was in the training
set" with false-positive rate a and false-negative rate b satisfies a + e^eps b >= 1 - delta and
e^eps a + b >= 1 - delta.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidct.privacy.accounting import Accountant, Sampling
from covidct.privacy.statements import sampling_assumption
from covidct.runs import Run, number_out, read_number
from data_prep.atomic import atomic_write_json, atomic_write_text
from data_prep.deid import UnitBasis
from data_prep.errors import CovidCTError

logger = logging.getLogger(__name__)

REPORT_FORMAT = "covidct-privacy-report/1"
JSON_NAME = Run.REPORT_JSON
MARKDOWN_NAME = Run.REPORT_MD
PRIVACY_UNITS = ("patient", "slice")


class ReportFormatError(CovidCTError):
    """A privacy report file cannot be read back."""


@dataclass(frozen=True)
class PrivacyReport:
    """The privacy facts of one run; ``build_report`` checks them and writes ``notes``.

    Attributes:
        dp: False for the non-private baseline (epsilon = inf).
        target_epsilon: the budget asked for, or None when sigma was set directly.
        epsilon: achieved epsilon over every step taken; ``math.inf`` when not private.
        delta: the delta at which epsilon holds.
        noise_multiplier: sigma (noise std / clip norm).
        sampling_rate: q, the probability that a unit is in a step.
        expected_batch_size: q * N.
        steps: every noisy step taken (resumed runs included).
        epochs: steps * q.
        clip_norm: C, the bound on one unit's contribution.
        privacy_unit: "patient" or "slice", the thing the guarantee is about.
        max_slices_per_unit: k, the most slices one patient contributes to training.
        n_units: N, the number of privacy units in the training set.
        accountant: RDP or PLD.
        sampling: how batches were actually formed.
        epsilon_per_epoch: cumulative epsilon after each epoch.
        tf_privacy_statement: tensorflow-privacy's statement for the same run.
        notes: assumptions and caveats, in plain sentences.
        audit: the empirical membership-inference audit (covidct.privacy.audit), once run.
        steps_repeated: steps taken again after an interruption (``covidct train --resume``);
            they are included in ``steps`` and in epsilon.
        steps_taken: steps actually run when fewer than ``steps`` (an early stop: epsilon is
            counted for the planned steps, ``steps``); None when every counted step ran.
        randomness: where the sampling and noise randomness came from (the guarantee assumes
            it is secret); empty for reports written before covidct said so.
        unit_bases: training patients by how prepare identified them (``UnitBasis`` values):
            only ``dicom_patient_id`` names a person; the rest are fallbacks.
        released: what the run publishes outside the guarantee (computed without noise).
    """

    dp: bool
    target_epsilon: float | None
    epsilon: float
    delta: float
    noise_multiplier: float
    sampling_rate: float
    expected_batch_size: float
    steps: int
    epochs: float
    clip_norm: float
    privacy_unit: str
    max_slices_per_unit: int
    n_units: int
    accountant: Accountant
    sampling: Sampling
    epsilon_per_epoch: list[float]
    tf_privacy_statement: str
    notes: list[str] = dataclasses.field(default_factory=list)
    audit: dict[str, Any] | None = None
    steps_repeated: int = 0
    steps_taken: int | None = None
    randomness: str = ""
    unit_bases: dict[str, int] = dataclasses.field(default_factory=dict)
    released: list[str] = dataclasses.field(default_factory=list)


# fields a report written by an older covidct may lack
_OPTIONAL = frozenset(
    {"audit", "steps_repeated", "steps_taken", "randomness", "unit_bases", "released"}
)


@dataclass(frozen=True)
class MembershipBounds:
    """What (epsilon, delta) allows a membership attacker, whatever their method.

    Attributes:
        advantage: the most true-positive rate minus false-positive rate any test can reach,
            (e^eps - 1 + 2 delta) / (e^eps + 1) (Kairouz et al. 2015, Thm. 2.1, at the
            symmetric corner of the trade-off region).
        accuracy: the most often an attacker can be right when each patient was in the
            training set with probability 1/2: (e^eps + delta) / (e^eps + 1).
        odds_factor: e^eps, the most seeing the model multiplies the attacker's odds under
            pure eps-DP (delta adds a small additive slack).
    """

    advantage: float
    accuracy: float
    odds_factor: float


def membership_bounds(*, epsilon: float, delta: float) -> MembershipBounds:
    """Bounds on any membership-inference attacker implied by (epsilon, delta)-DP.

    Args:
        epsilon: epsilon (``math.inf`` gives the trivial bounds 1, 1, inf).
        delta: delta.

    Returns:
        The bounds, each capped at its trivial value.
    """
    if math.isinf(epsilon):
        return MembershipBounds(advantage=1.0, accuracy=1.0, odds_factor=math.inf)
    # Written with e^-eps so that a large epsilon does not overflow.
    inv = math.exp(-epsilon)
    advantage = (1 - inv + 2 * delta * inv) / (1 + inv)
    accuracy = (1 + delta * inv) / (1 + inv)
    odds = math.exp(epsilon) if epsilon < 700 else math.inf
    return MembershipBounds(
        advantage=min(1.0, advantage), accuracy=min(1.0, accuracy), odds_factor=odds
    )


def group_privacy(*, epsilon: float, delta: float, group_size: int) -> tuple[float, float]:
    """(epsilon, delta) for a group of ``group_size`` units from a per-unit guarantee.

    Uses (m eps, m e^{(m-1) eps} delta) (Vadhan 2017, "The Complexity of Differential Privacy",
    Lemma 2.2; Dwork & Roth 2014, Thm. 2.2 for delta = 0).

    Args:
        epsilon: per-unit epsilon.
        delta: per-unit delta.
        group_size: m.

    Returns:
        The group's (epsilon, delta); delta is capped at 1 (a vacuous guarantee).
    """
    m = group_size
    group_eps = m * epsilon
    exponent = (m - 1) * epsilon
    if exponent > 700:  # e^700 overflows a float; delta is vacuous long before
        return group_eps, 1.0 if delta > 0 else 0.0
    return group_eps, min(1.0, m * math.exp(exponent) * delta)


def _build_notes(r: PrivacyReport) -> list[str]:
    notes: list[str] = []
    if not r.dp:
        notes.append(
            "No privacy guarantee: this model was trained without differential privacy "
            "(no per-unit clipping or noise accounting), so epsilon is infinite. It may have "
            "memorised individual patients; do not release it outside the data holder."
        )
        return notes
    notes.append(sampling_assumption(r.sampling))
    if r.privacy_unit == "patient":
        notes.append(
            f"Privacy unit: the patient. Each patient's training slices (at most "
            f"k = {r.max_slices_per_unit}) were averaged and clipped together to norm "
            f"C = {r.clip_norm:g}, so the guarantee covers adding or removing one patient with "
            "all of their slices."
        )
    else:
        m = r.max_slices_per_unit
        g_eps, g_delta = group_privacy(epsilon=r.epsilon, delta=r.delta, group_size=m)
        delta_txt = "1 (vacuous)" if g_delta >= 1 else f"{g_delta:.3g}"
        notes.append(
            "Privacy unit: the slice. The guarantee covers adding or removing ONE slice; it does "
            "NOT cover a patient as a whole, nor whether a patient took part in the study. A "
            f"patient with m slices in training is protected only through group privacy, "
            f"roughly (m * epsilon, m * e^((m-1) epsilon) * delta): for m = k = {m} slices "
            f"that is epsilon ~ {g_eps:.3g} and delta ~ {delta_txt} (Vadhan 2017, Lemma 2.2), "
            "usually no meaningful protection. Use the patient unit for patient-level privacy."
        )
    if r.target_epsilon is not None and r.epsilon > r.target_epsilon * (1 + 1e-9):
        notes.append(
            f"The achieved epsilon {r.epsilon:.4g} EXCEEDS the target {r.target_epsilon:g} "
            "(for example, training was resumed or extended beyond the planned steps)."
        )
    if r.randomness:
        notes.append(
            "The guarantee assumes the randomness of the sampling and of the noise is secret. "
            f"It came from {r.randomness}. The key was never written to the run folder, its "
            "checkpoints, the logs, the report or the ledger, and it was gone when training "
            "ended (a resumed attempt drew a new key). Whoever could regenerate the noise could "
            "subtract it from two checkpoints; whoever knew the sample would lose the "
            "amplification by subsampling that the accounting relies on."
        )
    notes += _basis_notes(r)
    if r.steps_taken is not None and r.steps_taken < r.steps:
        notes.append(
            f"Training stopped early after {r.steps_taken} of the {r.steps} planned steps "
            "(no validation improvement). A stopping rule that looks at results is not part of "
            f"the mechanism, so epsilon, the report and the ledger count all {r.steps} steps."
        )
    if r.steps_repeated:
        notes.append(
            f"Training was interrupted and resumed from a checkpoint: {r.steps_repeated} "
            "step(s) ran again. They are counted twice in steps and epsilon, because the noisy "
            "updates of the lost attempt may have been observed."
        )
    if r.n_units > 0 and r.delta >= 1 / r.n_units:
        notes.append(
            f"delta = {r.delta:g} is not below 1/N = {1 / r.n_units:.3g}: a mechanism that "
            "publishes one random patient's data outright would meet it; the guarantee is weak."
        )
    notes.append(
        f"Accountant: {r.accountant.value.upper()} over the composed Poisson-subsampled Gaussian "
        "mechanism (dp_accounting), add-or-remove-one-unit adjacency. The bound covers every "
        "intermediate model and checkpoint, not only the final model."
    )
    if r.released:
        notes.append(
            "Published without noise, so outside the guarantee (add-or-remove adjacency treats "
            "them as public): " + "; ".join(r.released) + "."
        )
    notes.append(
        "Not covered: validation and test patients are not in the training set, so metrics "
        "computed on them (and model selection using them) are outside this epsilon; nor is "
        "choosing among several runs (hyperparameter tuning spends budget too, see the "
        "dataset's privacy ledger; Papernot & Steinke 2022)."
    )
    return notes


def _basis_notes(r: PrivacyReport) -> list[str]:
    """What a "patient" of this training set really is (prepare's identity fallbacks)."""
    if not r.unit_bases:
        return []
    total = sum(r.unit_bases.values())
    persons = r.unit_bases.get(UnitBasis.DICOM_PATIENT_ID.value, 0)
    if persons == total:
        return [
            f"All {total} training patients were identified by the DICOM PatientID of their "
            "scans. One person filed under two PatientIDs would count as two patients."
        ]
    parts = [
        f"{n} x {UnitBasis(b).covers if b in UnitBasis._value2member_map_ else b}"
        for b, n in sorted(r.unit_bases.items(), key=lambda kv: -kv[1])
        if b != UnitBasis.DICOM_PATIENT_ID.value
    ]
    what = "None" if persons == 0 else f"Only {persons}"
    return [
        f"{what} of the {total} training patients were identified by a DICOM PatientID; the "
        f"others are prepare's fallbacks: {'; '.join(parts)}. For those the guarantee covers "
        "that unit, not necessarily the person: a person with m such units (several studies, "
        "files or images) is protected only through group privacy, roughly m times epsilon. "
        "Prepare DICOM with PatientID, or one folder per patient, to protect persons."
    ]


def build_report(facts: PrivacyReport) -> PrivacyReport:
    """The report of a run: ``facts`` (every field but ``notes`` and ``audit``) checked, and
    its notes (assumptions and caveats) written.

    Raises:
        ReportFormatError: an unknown privacy unit, no units or slices, or a private run with
            infinite epsilon.
    """
    if facts.privacy_unit not in PRIVACY_UNITS:
        raise ReportFormatError(
            f"privacy unit: expected one of {', '.join(PRIVACY_UNITS)}, found "
            f"{facts.privacy_unit!r}. Fix: pass the unit the mechanism clipped."
        )
    if facts.max_slices_per_unit < 1 or facts.n_units < 1:
        raise ReportFormatError(
            f"expected at least one unit and one slice per unit, found n_units={facts.n_units}, "
            f"max_slices_per_unit={facts.max_slices_per_unit}. Fix: pass the training set's "
            "figures."
        )
    if facts.dp and not math.isfinite(facts.epsilon):
        raise ReportFormatError(
            f"a private run must have a finite epsilon, found {facts.epsilon}. "
            "Fix: report it as dp=False."
        )
    report = dataclasses.replace(
        facts,
        epsilon=facts.epsilon if facts.dp else math.inf,
        epsilon_per_epoch=list(facts.epsilon_per_epoch),
        unit_bases=dict(facts.unit_bases),
        released=list(facts.released),
        notes=[],
    )
    return dataclasses.replace(report, notes=_build_notes(report))


def _float_out(x: float | None) -> float | str | None:
    if x is None:
        return None
    if math.isnan(x):
        raise ReportFormatError("a privacy report cannot hold NaN; the run's accounting is broken")
    return number_out(float(x))


def _float_in(x: Any, key: str) -> float:
    value = None if isinstance(x, bool) or not isinstance(x, int | float | str) else read_number(x)
    if value is None or math.isnan(value):
        raise ReportFormatError(f"{key}: expected a number or 'inf', found {x!r}")
    return value


_FLOAT_KEYS = (
    "epsilon",
    "delta",
    "noise_multiplier",
    "sampling_rate",
    "expected_batch_size",
    "epochs",
    "clip_norm",
)


def report_to_json(report: PrivacyReport) -> dict[str, Any]:
    """A JSON-ready dict: enums as their values, infinity as the string "inf".

    Args:
        report: the report.

    Returns:
        A dict with every field, plus ``format``.
    """
    out: dict[str, Any] = {"format": REPORT_FORMAT}
    for f in dataclasses.fields(report):
        out[f.name] = getattr(report, f.name)
    for key in _FLOAT_KEYS:
        out[key] = _float_out(out[key])
    out["target_epsilon"] = _float_out(report.target_epsilon)
    out["epsilon_per_epoch"] = [_float_out(e) for e in report.epsilon_per_epoch]
    out["accountant"] = report.accountant.value
    out["sampling"] = report.sampling.value
    out["notes"] = list(report.notes)
    return out


def report_from_json(d: dict[str, Any]) -> PrivacyReport:
    """Read back what ``report_to_json`` wrote.

    Args:
        d: the parsed JSON object.

    Returns:
        The report.

    Raises:
        ReportFormatError: wrong format tag, missing or unknown keys, or bad values.
    """
    if d.get("format") != REPORT_FORMAT:
        raise ReportFormatError(
            f"expected a privacy report with format {REPORT_FORMAT!r}, found "
            f"{d.get('format')!r}. Fix: regenerate it with `covidct report`."
        )
    names = {f.name for f in dataclasses.fields(PrivacyReport)}
    missing = names - d.keys() - _OPTIONAL
    unknown = d.keys() - names - {"format"}
    if missing or unknown:
        raise ReportFormatError(
            f"privacy report keys: missing {sorted(missing)}, unknown {sorted(unknown)}. "
            "Fix: regenerate it with `covidct report`."
        )
    values = {name: d[name] for name in names if name in d}
    try:
        for key in _FLOAT_KEYS:
            values[key] = _float_in(d[key], key)
        if d["target_epsilon"] is not None:
            values["target_epsilon"] = _float_in(d["target_epsilon"], "target_epsilon")
        values["epsilon_per_epoch"] = [
            _float_in(e, "epsilon_per_epoch") for e in d["epsilon_per_epoch"]
        ]
        values["accountant"] = Accountant(d["accountant"])
        values["sampling"] = Sampling(d["sampling"])
        values["notes"] = [str(n) for n in d["notes"]]
        values["unit_bases"] = {str(k): int(v) for k, v in d.get("unit_bases", {}).items()}
        values["released"] = [str(x) for x in d.get("released", [])]
    except (ValueError, TypeError) as err:
        raise ReportFormatError(f"privacy report has a bad value: {err}") from err
    return PrivacyReport(**values)


def _plain_language(r: PrivacyReport) -> list[str]:
    lines = ["## What this means, in plain language", ""]
    if not r.dp:
        lines += [
            "This model was trained **without differential privacy**. Nothing bounds what "
            "someone holding the model can learn about whether a given patient's scans were "
            "used to train it (epsilon is infinite). Treat the model as containing patient "
            "data.",
            "",
        ]
        return lines
    b = membership_bounds(epsilon=r.epsilon, delta=r.delta)
    who = "patient's scans" if r.privacy_unit == "patient" else "CT slice"
    lines += [
        f"This model was trained with differential privacy: epsilon = {r.epsilon:.3g}, "
        f"delta = {r.delta:.3g}, protecting each **{r.privacy_unit}** among the "
        f"{r.n_units} {r.privacy_unit}s of the training set.",
        "",
        f"Picture an attacker who holds the model (and every checkpoint), knows everything about "
        f"every other {r.privacy_unit}, and wants to decide whether one particular {who} "
        f"{'were' if r.privacy_unit == 'patient' else 'was'} used in training. Whatever method "
        "they use (hypothesis-testing reading of differential privacy; Kairouz et al. 2015, "
        "Balle et al. 2020):",
        "",
        f"- Starting from a 50/50 guess, they can be right at most **{100 * b.accuracy:.1f}%** "
        "of the time (a coin flip is right 50% of the time).",
        f"- Their true-positive rate minus their false-positive rate is at most "
        f"**{b.advantage:.3f}** (0 = no better than chance, 1 = certainty).",
        f"- Ignoring delta, seeing the model multiplies their odds by at most e^epsilon = "
        f"**{b.odds_factor:.3g}** (prior odds 1:1 become at most {b.odds_factor:.3g}:1); delta "
        f"= {r.delta:.3g} is a small additive slack on top of these bounds.",
        "",
        "These are worst-case bounds over all attackers and all "
        f"{r.privacy_unit}s; real attacks usually do much worse. They rest on the assumptions "
        "in the notes below.",
        "",
    ]
    if r.sampling is not Sampling.POISSON:
        lines += [
            "**Caution:** this run's batches were not Poisson-sampled, so these figures rest on "
            "an assumption, not a proof (see the sampling note below).",
            "",
        ]
    if r.privacy_unit == "slice":
        g_eps, g_delta = group_privacy(
            epsilon=r.epsilon, delta=r.delta, group_size=r.max_slices_per_unit
        )
        g = membership_bounds(epsilon=g_eps, delta=min(1.0, g_delta))
        lines += [
            f"**Warning:** the protected unit is a single slice, not a patient. For a whole "
            f"patient with {r.max_slices_per_unit} slices, group privacy only gives epsilon "
            f"~ {g_eps:.3g}: an attacker could be right up to {100 * g.accuracy:.1f}% of the "
            "time about whether that patient took part.",
            "",
        ]
    return lines


def _fmt(x: float | None) -> str:
    if x is None:
        return "none"
    return "inf" if math.isinf(x) else f"{x:.6g}"


def _audit_section(audit: dict[str, Any]) -> list[str]:
    from covidct.privacy.audit import epsilon_estimate

    lines = [
        "## Empirical audit: membership inference",
        "",
        audit["reading"],
        "",
        f"{audit['members']} training patients against {audit['non_members']} held-out "
        f"patients ({' and '.join(audit['non_member_splits'])} splits).",
        "",
        "| attack | AUC | advantage (TPR - FPR) | epsilon estimate (one model) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {a['attack'].replace('_', ' ')} | {a['auc']:.3f} | {a['advantage']:.3f} | "
        f"{epsilon_estimate(a):.3g} |"
        for a in audit["attacks"]
    ]
    lines.append("")
    if audit.get("caveat"):
        lines += [audit["caveat"], ""]
    return lines


def report_to_markdown(report: PrivacyReport) -> str:
    """The report for a privacy officer: plain language, numbers, notes, then tf-privacy's text.

    Args:
        report: the report.

    Returns:
        Markdown text.
    """
    r = report
    lines = ["# Privacy report", ""]
    lines += _plain_language(r)
    rows = [
        ("differentially private", "yes" if r.dp else "no"),
        ("epsilon (achieved)", _fmt(r.epsilon)),
        ("target epsilon", _fmt(r.target_epsilon)),
        ("delta", _fmt(r.delta)),
        ("privacy unit", r.privacy_unit),
        ("max slices per patient (k)", str(r.max_slices_per_unit)),
        ("privacy units in training (N)", str(r.n_units)),
        ("noise multiplier (sigma)", _fmt(r.noise_multiplier)),
        ("clip norm (C)", _fmt(r.clip_norm)),
        ("sampling rate (q)", _fmt(r.sampling_rate)),
        ("expected batch size (q*N)", _fmt(r.expected_batch_size)),
        ("steps", str(r.steps)),
        *([("of which repeated after a resume", str(r.steps_repeated))] * bool(r.steps_repeated)),
        *([("steps run (early stop)", str(r.steps_taken))] * (r.steps_taken is not None)),
        ("epochs", _fmt(r.epochs)),
        ("sampling", r.sampling.value),
        ("accountant", r.accountant.value.upper()),
    ]
    lines += ["## The numbers", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines.append("")
    if r.epsilon_per_epoch:
        lines += ["Epsilon after each epoch:", "", "| epoch | epsilon |", "|---|---|"]
        lines += [f"| {i} | {_fmt(e)} |" for i, e in enumerate(r.epsilon_per_epoch, start=1)]
        lines.append("")
    if r.audit:
        lines += _audit_section(r.audit)
    lines += ["## Assumptions and caveats", ""]
    lines += [f"- {n}" for n in r.notes]
    lines.append("")
    if r.tf_privacy_statement:
        lines += [
            "## Cross-check: tensorflow-privacy's statement",
            "",
            "Computed independently by tensorflow-privacy's `compute_dp_sgd_privacy_statement`"
            " for the same run; the lines starting `covidct:` are ours, the rest is verbatim.",
            "",
            "```text",
            r.tf_privacy_statement.rstrip("\n"),
            "```",
            "",
        ]
    return "\n".join(lines)


def write_report(report: PrivacyReport, run_dir: Path) -> None:
    """Write ``privacy_report.json`` and ``privacy_report.md`` into ``run_dir``, atomically.

    Args:
        report: the report.
        run_dir: the run's folder (created if missing).
    """
    atomic_write_json(run_dir / JSON_NAME, report_to_json(report))
    atomic_write_text(run_dir / MARKDOWN_NAME, report_to_markdown(report))
    logger.info("privacy report written to %s (epsilon=%s)", run_dir, _fmt(report.epsilon))


def read_report(run_dir: Path) -> PrivacyReport:
    """Read ``privacy_report.json`` from a run folder.

    Raises:
        ReportFormatError: missing, unreadable or not a privacy report.
    """
    import json

    path = run_dir / JSON_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ReportFormatError(
            f"cannot read {path}: {err}. Fix: point at a run folder written by covidct train."
        ) from err
    return report_from_json(data)
