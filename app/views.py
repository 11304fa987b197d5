"""The dashboard's three pages. Thin: data and logic come from covidct (unit-tested there).

Uploads are read from Streamlit's in-memory buffers (``getvalue()``) and never written to disk
or logged; no DICOM header value is ever shown.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

from app.services import (
    DISCLAIMER,
    ScanResult,
    curves_rows,
    find_runs,
    heat_map_kind,
    heat_overlay,
    predict_upload,
    runs_table,
)
from covidct.inference import ModelBundle, load_bundle
from covidct.model_card import metric_rows
from covidct.privacy.report import read_report, report_to_markdown
from covidct.runs import Run, read_number
from data_prep.errors import CovidCTError


@st.cache_resource(show_spinner="Loading the model...")
def _bundle(run: str) -> ModelBundle:
    """One loaded model per server, shared by every session (its graphs are traced here)."""
    bundle = load_bundle(Path(run))
    bundle.warm_up()
    return bundle


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.3g}"
    return str(x)


def _no_runs(root: Path) -> None:
    st.info(
        f"No trained runs in `{root}`. Train one with `covidct train --data PREP --epsilon 3 "
        f"--runs {root}` (or start the dashboard with `--runs` pointing at your runs)."
    )


# ---- Models ------------------------------------------------------------------------------


def models_page(root: Path) -> None:
    st.header("Models")
    runs = find_runs(root)
    if not runs:
        _no_runs(root)
        return
    table = pd.DataFrame(runs_table(runs, root))
    st.dataframe(table, hide_index=True, width="stretch")
    names = list(table["run"])
    choice = st.selectbox("Model", names, key="model_run")
    run = runs[names.index(choice)]
    try:
        report = read_report(run)
    except CovidCTError as exc:
        st.error(str(exc))
        return
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Privacy report")
        st.markdown(report_to_markdown(report).split("\n", 1)[1])  # its own title dropped
    with right:
        metrics = Run(run).read_or(Run.METRICS, None)
        if metrics:
            for level in ("patient", "slice"):
                st.subheader(f"Test metrics, {level} level")
                st.table(pd.DataFrame(metric_rows(metrics[level]), columns=["metric", "value"]))
            cm = metrics["patient"]["confusion_matrix"]
            st.caption("Patient-level confusion matrix (test split)")
            st.table(
                pd.DataFrame(
                    [[cm["tp"], cm["fn"]], [cm["fp"], cm["tn"]]],
                    index=["COVID-19 (truth)", "not COVID-19 (truth)"],
                    columns=["called COVID-19", "called not COVID-19"],
                )
            )
        history = Run(run).read_or(Run.HISTORY, None) or []
        if history:
            st.subheader("Training")
            frame = pd.DataFrame(
                {
                    "epoch": [h["epoch"] for h in history],
                    "validation patient AUC": [h["validation_patient_auc"] for h in history],
                    "epsilon spent": [_eps(h["epsilon"]) for h in history],
                }
            ).set_index("epoch")
            st.line_chart(frame[["validation patient AUC"]])
            if frame["epsilon spent"].notna().any():
                st.line_chart(frame[["epsilon spent"]])


def _eps(x: Any) -> float | None:
    """A finite epsilon, or None (not private)."""
    value = read_number(x)
    return None if value is None or math.isinf(value) else value


# ---- Privacy/utility ---------------------------------------------------------------------


def curves_page(root: Path) -> None:
    st.header("Privacy/utility")
    rows = curves_rows(root)
    if not rows:
        _no_runs(root)
        return
    frame = pd.DataFrame(rows)
    private = frame[frame["private"] & frame["patient_auc"].notna()]
    base = frame[~frame["private"] & frame["patient_auc"].notna()]
    baseline = float(base["patient_auc"].mean()) if len(base) else None
    st.caption(
        "Test-split patient AUC (mean over seeds, band = min to max), one series per model and "
        "batch size. The dashed line is the non-private baseline: the same model and data "
        "without DP, at its own learning rate."
        if baseline is not None
        else "No non-private baseline yet: add `inf` to a sweep's --epsilons."
    )
    if len(private):
        agg = (
            private.groupby(["model", "epsilon_target", "batch_size"])["patient_auc"]
            .agg(["mean", "min", "max"])
            .reset_index()
        )
        agg["batch"] = [
            f"{m}, batch {'all (q = 1)' if b == 0 else f'{b:g}'}"
            for m, b in zip(agg["model"], agg["batch_size"], strict=True)
        ]
        st.subheader("Utility vs epsilon")
        st.altair_chart(_band_chart(agg, "epsilon_target", "batch", baseline, log=True))
        st.subheader("Utility vs logical batch size at fixed epsilon")
        agg["epsilon"] = [
            f"{m}, epsilon {e:g}" for m, e in zip(agg["model"], agg["epsilon_target"], strict=True)
        ]
        st.altair_chart(_band_chart(agg, "batch_size", "epsilon", baseline, log=True))
        st.subheader("Epsilon spent vs epoch")
        spent = [
            {"run": f"{r['sweep']}/{r['run']}", "epoch": i + 1, "epsilon": e}
            for r in rows
            if r["private"]
            for i, e in enumerate(r["epsilon_per_epoch"])
            if e is not None
        ]
        if spent:
            st.altair_chart(
                alt.Chart(pd.DataFrame(spent))
                .mark_line(point=True)
                .encode(x="epoch:Q", y="epsilon:Q", color="run:N", tooltip=["run", "epsilon"])
                .interactive()
            )
    else:
        st.info("No private runs yet.")
    st.subheader("All runs")
    st.dataframe(
        frame.drop(columns=["epsilon_per_epoch", "private"]),
        hide_index=True,
        width="stretch",
    )


def _band_chart(agg: pd.DataFrame, x: str, color: str, baseline: float | None, *, log: bool) -> Any:
    scale = alt.Scale(type="log") if log else alt.Scale()
    enc_x = alt.X(f"{x}:Q", scale=scale, title=x.replace("_", " "))
    line = (
        alt.Chart(agg)
        .mark_line(point=True)
        .encode(
            x=enc_x,
            y=alt.Y("mean:Q", title="test patient AUC"),
            color=f"{color}:N",
            tooltip=[x, "mean", "min", "max"],
        )
    )
    band = (
        alt.Chart(agg)
        .mark_area(opacity=0.2)
        .encode(x=enc_x, y="min:Q", y2="max:Q", color=f"{color}:N")
    )
    layers = [band, line]
    if baseline is not None:
        layers.append(
            alt.Chart(pd.DataFrame({"baseline": [baseline]}))
            .mark_rule(strokeDash=[6, 4], color="black")
            .encode(y="baseline:Q")
        )
    return alt.layer(*layers).interactive()  # zoom and pan; tooltips name each point


# ---- Predict -----------------------------------------------------------------------------


def predict_page(root: Path) -> None:
    st.header("Predict")
    st.warning(DISCLAIMER)
    runs = find_runs(root)
    if not runs:
        _no_runs(root)
        return
    names = [str(r.relative_to(root)) for r in runs]
    choice = st.selectbox("Model", names, key="predict_run")
    run = runs[names.index(choice)]
    try:
        bundle = _bundle(str(run))
    except CovidCTError as exc:
        st.error(str(exc))
        return
    st.caption(
        f"epsilon {_fmt(bundle.epsilon)} per {bundle.privacy_unit}; test patient AUC "
        f"{_fmt(bundle.test_patient_auc)}; call threshold {bundle.threshold:.3f} (chosen on "
        "validation patients)"
    )
    files = st.file_uploader(
        "Upload DICOM files, a .zip of a DICOM series or study, a NIfTI volume (.nii, .nii.gz) "
        "or PNG/JPG slices. Read in memory only; nothing is stored.",
        accept_multiple_files=True,
        key="upload",
    )
    if not files:
        return
    data = [(f.name, f.getvalue()) for f in files]
    result = _predict(bundle, run, data)
    if result is None:
        return
    _show_result(bundle, result)


def _predict(bundle: ModelBundle, run: Path, data: list[tuple[str, bytes]]) -> ScanResult | None:
    digest = hashlib.sha256()
    for name, content in data:
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    key = f"{run}:{digest.hexdigest()}"
    cache = st.session_state.setdefault("predictions", {})
    if key in cache:
        return cache[key]  # type: ignore[no-any-return]
    try:
        with st.spinner("Reading the scan and predicting..."):
            result = predict_upload(bundle, data)
    except CovidCTError as exc:
        st.error(f"This upload cannot be used: {exc}")
        return None
    except (KeyboardInterrupt, SystemExit, ScriptControlException):
        raise
    except BaseException as exc:  # noqa: BLE001 - a bad upload must never show a traceback
        # (BaseException: a Rust decoder's panic is one, and it must not reach the page either)
        st.error(
            "This upload could not be read as a CT scan "
            f"({type(exc).__name__}). Check that it is a CT series, volume or slice images, "
            "and export it again if it may be damaged."
        )
        return None
    cache.clear()  # keep one scan in memory, not every upload of the session
    cache[key] = result
    return result


def _show_result(bundle: ModelBundle, result: ScanResult) -> None:
    pred = result.prediction
    call = "COVID-19 suggested" if pred.positive else "not suggested"
    a, b = st.columns(2)
    a.metric("Scan-level probability", f"{pred.probability:.3f}")
    b.metric(f"Call at threshold {pred.threshold:.3f}", call)
    st.caption(result.scan.description)
    for note in result.notes:
        st.info(note)
    if result.scan.flags:
        with st.expander(f"Reader notes ({len(result.scan.flags)})"):
            for flag in result.scan.flags:
                st.write(f"- {flag}")
    if result.scan.skipped:
        with st.expander(f"Files left out ({len(result.scan.skipped)})"):
            for s in result.scan.skipped:
                st.write(f"- {s}")
    n = result.n_slices
    best = int(pred.slice_probs.argmax())
    index = best
    if n > 1:
        index = st.slider("Slice", 1, n, value=best + 1, key="slice") - 1
    left, right = st.columns(2)
    left.image(
        result.scan.display[index],
        caption=f"Slice {index + 1} of {n} (lung window); probability "
        f"{pred.slice_probs[index]:.3f}",
        clamp=True,
        width="stretch",
    )
    try:
        overlay = heat_overlay(bundle, result, index)
        right.image(
            overlay,
            caption=f"{heat_map_kind(bundle)}: regions that raised the COVID-19 score on this "
            "slice",
            width="stretch",
        )
    except (ValueError, CovidCTError) as exc:
        right.info(f"No heat map for this model: {exc}")
    probs = pd.DataFrame({"slice": range(1, n + 1), "probability": pred.slice_probs})
    chart = (
        alt.Chart(probs)
        .mark_line(point=True)
        .encode(x="slice:Q", y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])))
    )
    rule = (
        alt.Chart(pd.DataFrame({"threshold": [pred.threshold]}))
        .mark_rule(strokeDash=[6, 4], color="red")
        .encode(y="threshold:Q")
    )
    st.subheader("Probability along the volume")
    st.altair_chart(alt.layer(chart, rule))
