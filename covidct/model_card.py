"""``covidct report``: a run's (or a sweep's) privacy, metrics and audit in the terminal, and a
self-contained model card (Markdown or HTML).

Everything shown comes from files that are already de-identified: the run folder (report,
metrics, audit, history, run.json) and the prepared dataset's dataset.json and prep_report.json
(counts only). Nothing is read from the private/ folder or the original scans.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidct.privacy.report import PrivacyReport, read_report, report_to_markdown
from covidct.runs import Run, SweepFolder
from data_prep.errors import CovidCTError
from data_prep.prepared import PrepFolder

__all__ = [
    "RunSummary",
    "auc_interval",
    "load_run",
    "model_card_html",
    "model_card_markdown",
    "sweep_html",
    "terminal_summary",
    "wilson_interval",
]

_Z95 = 1.959963984540054


class ReportInputError(CovidCTError):
    """The folder given to covidct report is neither a run nor a sweep."""


def wilson_interval(successes: int, n: int) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion (None when n = 0)."""
    if n <= 0:
        return None
    p = successes / n
    z2 = _Z95 * _Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def auc_interval(auc: float, n_pos: int, n_neg: int) -> tuple[float, float] | None:
    """95% interval of an AUC from its standard error (Hanley & McNeil, Radiology 1982).

    At AUC 0 or 1 the formula's error is 0 whatever the sample size; the error is then taken at
    half a pair away from the edge (1 - 0.5 / (n_pos n_neg)), so a perfect score on 3 + 3
    patients does not come out as certain.
    """
    if n_pos <= 0 or n_neg <= 0:
        return None
    edge = 0.5 / (n_pos * n_neg)
    a = min(max(auc, edge), 1 - edge)
    q1 = a / (2 - a)
    q2 = 2 * a * a / (1 + a)
    pairs = n_pos * n_neg
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / pairs
    se = math.sqrt(max(var, 0.0))
    return max(0.0, auc - _Z95 * se), min(1.0, auc + _Z95 * se)


@dataclass
class RunSummary:
    run_dir: Path
    privacy: PrivacyReport
    metrics: dict[str, Any]
    meta: dict[str, Any]
    history: list[dict[str, Any]]
    dataset: dict[str, Any] | None  # counts from the prepared dataset, when still available


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ReportInputError(f"cannot read {path}: {err}") from err


def load_run(run_dir: Path) -> RunSummary:
    """Read a finished run folder.

    Raises:
        ReportInputError: not a finished run.
    """
    run = Run(run_dir)
    if not run.is_finished:
        raise ReportInputError(
            f"{run_dir} is not a finished run (no {Run.META}). Fix: give a folder written by "
            f"covidct train, or a sweep folder (with {SweepFolder.SPEC})."
        )
    meta = run.meta()
    dataset = None
    prep = PrepFolder(meta.get("prep", ""))
    if prep.dataset_file.is_file() and prep.report_file.is_file():
        ds = _read_json(prep.dataset_file)
        counts = _read_json(prep.report_file).get("counts", {})
        dataset = {
            "patients": ds.get("patients"),
            "volumes": ds.get("volumes"),
            "slices": ds.get("slices_total"),
            "image_size": ds.get("slices", {}).get("image_size"),
            "patients_per_split": counts.get("patients_per_split", {}),
            "patients_per_split_and_label": counts.get("patients_per_split_and_label", {}),
            "skipped_inputs": counts.get("skipped", 0),
        }
    return RunSummary(
        run_dir=run_dir,
        privacy=read_report(run_dir),
        metrics=run.metrics(),
        meta=meta,
        history=run.history(),
        dataset=dataset,
    )


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" ({ci[0]:.3f}-{ci[1]:.3f})"


def metric_rows(level: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value with 95% interval) for one level of metrics.json."""
    cm = level["confusion_matrix"]
    tp, tn, fp, fn = cm["tp"], cm["tn"], cm["fp"], cm["fn"]
    rows = []
    if level["auc"] is not None:
        rows.append(("AUC", _f(level["auc"]) + _ci(auc_interval(level["auc"], tp + fn, tn + fp))))
    else:
        rows.append(("AUC", "n/a (one class only)"))
    rows.append(("accuracy", _f(level["accuracy"]) + _ci(wilson_interval(tp + tn, level["n"]))))
    rows.append(("sensitivity", _f(level["sensitivity"]) + _ci(wilson_interval(tp, tp + fn))))
    rows.append(("specificity", _f(level["specificity"]) + _ci(wilson_interval(tn, tn + fp))))
    rows.append(("threshold (from validation)", _f(level["threshold"])))
    rows.append(("confusion matrix", f"TP {tp}, FN {fn}, FP {fp}, TN {tn}"))
    return rows


def _table(rows: list[tuple[str, str]], width: int = 30) -> str:
    return "\n".join(f"  {k:<{width}} {v}" for k, v in rows)


def _privacy_rows(r: PrivacyReport) -> list[tuple[str, str]]:
    return [
        ("differentially private", "yes" if r.dp else "NO (baseline)"),
        ("epsilon (achieved)", _f(r.epsilon)),
        ("target epsilon", _f(r.target_epsilon)),
        ("delta", f"{r.delta:.3g}"),
        ("privacy unit", r.privacy_unit),
        ("units in training (N)", str(r.n_units)),
        ("noise multiplier (sigma)", _f(r.noise_multiplier)),
        ("clip norm (C)", _f(r.clip_norm)),
        ("sampling", f"{r.sampling.value}, q = {r.sampling_rate:.4g}"),
        ("steps / epochs", f"{r.steps} / {r.epochs:.3g}"),
        ("accountant", r.accountant.value.upper()),
    ]


def terminal_summary(run: RunSummary) -> str:
    """Readable tables: privacy, test metrics (95% intervals), audit."""
    from covidct.privacy.audit import epsilon_estimate

    r = run.privacy
    parts = [f"run {run.run_dir.name}", "", "Privacy", _table(_privacy_rows(r)), ""]
    for level in ("patient", "slice"):
        parts += [
            f"Test metrics, {level} level (95% intervals)",
            _table(metric_rows(run.metrics[level])),
            "",
        ]
    if r.audit:
        rows = [
            (
                a["attack"].replace("_", " "),
                f"AUC {a['auc']:.3f}, advantage {a['advantage']:.3f}, "
                f"epsilon estimate {epsilon_estimate(a):.3g} (one model)",
            )
            for a in r.audit["attacks"]
        ]
        parts += ["Membership-inference audit", _table(rows), "", r.audit["reading"], ""]
    else:
        parts += ["No audit yet: run `covidct audit RUN`.", ""]
    return "\n".join(parts)


def _dataset_lines(ds: dict[str, Any] | None) -> list[str]:
    if ds is None:
        return ["The prepared dataset is no longer where the run recorded it; counts unavailable."]
    lines = [
        f"{ds['patients']} patients, {ds['volumes']} volumes, {ds['slices']} slices of "
        f"{ds['image_size']}x{ds['image_size']} pixels after preparation "
        f"({ds['skipped_inputs']} inputs skipped, each with its reason in {PrepFolder.REPORT}).",
        "",
        "| split | patients | negative | positive |",
        "|---|---|---|---|",
    ]
    for split in ("train", "validation", "test"):
        by_label = ds["patients_per_split_and_label"].get(split, {})
        lines.append(
            f"| {split} | {ds['patients_per_split'].get(split, 0)} | {by_label.get('0', 0)} | "
            f"{by_label.get('1', 0)} |"
        )
    return lines


def model_card_markdown(run: RunSummary) -> str:
    """The model card: intended use, data, privacy, metrics with intervals, audit, limitations."""
    r = run.privacy
    m = run.meta
    lines = [
        f"# Model card: {run.run_dir.name}",
        "",
        "## Intended use",
        "",
        "Research on privacy-preserving COVID-19 classification of chest CT: estimating what a "
        "differential-privacy budget costs in accuracy on a hospital's own data. **Not a "
        "medical device and not for diagnosis**; every output needs review by a radiologist.",
        "",
        f"Model `{m.get('model')}`, input {m.get('image_size')}x{m.get('image_size')} "
        "lung-window slices; one probability per slice, combined into a patient score "
        f"({run.metrics.get('patient_score', 'mean')} of the slice probabilities). Trained on "
        f"{m.get('device', 'unknown device')} in {m.get('seconds', '?')} s.",
        "",
        "## Data (counts only; no identifiers)",
        "",
        *_dataset_lines(run.dataset),
        "",
        "Patients are split (never slices), stratified by label; identifiers were replaced by "
        "keyed pseudonyms during preparation.",
        "",
    ]
    privacy_md = report_to_markdown(r).split("\n", 2)[2]  # drop its title
    lines += ["## Privacy guarantee", "", privacy_md.replace("## ", "### "), ""]
    for level in ("patient", "slice"):
        lines += [
            f"## Test metrics, {level} level (95% intervals)",
            "",
            "| metric | value |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in metric_rows(run.metrics[level])],
            "",
        ]
    lines += [
        "Intervals: Wilson for proportions, Hanley-McNeil for the AUC (taken half a pair from "
        "the edge at AUC 0 or 1). Slice-level labels are "
        "the patient's label (no per-slice truth), so slice metrics understate focal disease.",
        "",
        "## Limitations",
        "",
        f"- The test split holds {run.metrics['patient']['n']} patients: the intervals above "
        "show how much the figures could move on another sample of the same population.",
        "- Performance on other scanners, protocols, hospitals or disease prevalence is unknown.",
        "- The privacy guarantee is per "
        + r.privacy_unit
        + " and assumes each "
        + r.privacy_unit
        + " appears once in the training data under one pseudonym; it says nothing about "
        "information in the model that many patients share (that is what it learns).",
        "- Choosing this model among several trained on the same data has a privacy cost of "
        "its own that this run's epsilon does not include.",
    ]
    if r.dp:
        lines.append(
            "- The guarantee assumes the randomness of the patient sampling and of the noise "
            "stayed secret: "
            + (
                f"it came from {r.randomness}."
                if r.randomness
                else "this run's report does not say where it came from (written by an older "
                "covidct, whose noise was derived from the stored seed: treat the guarantee "
                "as void)."
            )
        )
    lines.append("")
    return "\n".join(lines)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;"
    "line-height:1.45;color:#1b1b1b}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #bbb;padding:.25em .6em;text-align:left}th{background:#eee}"
    "pre{background:#f4f4f4;padding:.6em;overflow-x:auto}img{max-width:100%}"
)


def markdown_to_html(md: str, title: str, images: dict[str, bytes] | None = None) -> str:
    """A small Markdown subset (headings, tables, lists, code blocks, bold, code) as one
    self-contained HTML page; ``images`` are embedded as data URIs after the text."""
    out: list[str] = []
    in_table = in_list = in_code = False
    for raw in md.splitlines():
        line = raw.rstrip()
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if in_table and not line.startswith("|"):
            out.append("</table>")
            in_table = False
        if in_list and not line.startswith("- "):
            out.append("</ul>")
            in_list = False
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-", ":"} for c in cells):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line:
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    if in_list:
        out.append("</ul>")
    for name, png in (images or {}).items():
        data = base64.b64encode(png).decode("ascii")
        out.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        out.append(f"<figcaption>{html.escape(name)}</figcaption></figure>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(out)
        + "\n</body></html>\n"
    )


def _inline(text: str) -> str:
    """Escape, then **bold** and `code`."""
    s = html.escape(text)
    parts = s.split("**")
    s = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    parts = s.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def model_card_html(run: RunSummary) -> str:
    return markdown_to_html(model_card_markdown(run), f"Model card: {run.run_dir.name}")


def sweep_html(sweep_dir: Path) -> str:
    """The sweep report with its plots embedded: one file to send to a privacy officer."""
    from covidct.runs import SweepFolder

    md = (sweep_dir / SweepFolder.REPORT).read_text()
    images = {
        p.name: p.read_bytes()
        for p in sorted(sweep_dir.glob("*.png"))
        if p.name in SweepFolder.FIGURES
    }
    return markdown_to_html(md, f"Sweep {sweep_dir.name}", images)
