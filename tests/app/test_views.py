"""Every dashboard page through Streamlit's AppTest, uploads included (good and bad)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.app.conftest import dicom_zip, nifti_upload
from tests.identity import identity_leaks

APP = str(Path(__file__).resolve().parents[2] / "app" / "dashboard.py")


def _app(root: Path, monkeypatch: pytest.MonkeyPatch, page: str) -> AppTest:
    monkeypatch.setenv("COVIDCT_RUNS", str(root))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, at.exception
    return at


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [e.value for e in at.error] + [i.value for i in at.info]
    parts += [w.value for w in at.warning]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


def test_models_page_lists_runs_and_opens_a_plain_language_report(runs, monkeypatch):
    at = _app(runs, monkeypatch, "Models")
    table = at.dataframe[0].value
    assert set(table["run"]) == {"eps3", "sweep1/runs/eps2_b8_s0", "sweep1/runs/epsinf_b8_s0"}
    assert {"epsilon", "delta", "privacy unit", "test patient AUC", "attack AUC"} <= set(table)
    at.selectbox(key="model_run").set_value("eps3").run()
    text = _texts(at)
    assert text.index("What this means, in plain language") < text.index("The numbers")
    assert "Empirical audit" in text
    assert any("confusion" in c.value for c in at.caption)


def test_curves_page_draws_the_sweep_and_marks_the_baseline(runs, monkeypatch):
    at = _app(runs, monkeypatch, "Privacy/utility")
    headers = [s.value for s in at.subheader]
    for title in (
        "Utility vs epsilon",
        "Utility vs logical batch size at fixed epsilon",
        "Epsilon spent vs epoch",
    ):
        assert title in headers
    assert "non-private baseline" in _texts(at)


@pytest.mark.parametrize("kind", ["nifti", "dicom_zip", "png"])
def test_predict_page_reads_uploads_and_shows_probability_viewer_and_heat_map(
    runs, cohort, monkeypatch, kind
):
    at = _app(runs, monkeypatch, "Predict")
    at.selectbox(key="predict_run").set_value("eps3").run()
    assert "not a diagnosis" in _texts(at)
    uploader = at.get("file_uploader")[0]
    if kind == "nifti":
        uploader.upload(*nifti_upload(cohort))
    elif kind == "dicom_zip":
        uploader.upload("series.zip", dicom_zip(cohort), "application/zip")
    else:
        for i in range(3):
            buf = io.BytesIO()
            img = np.random.default_rng(i).integers(0, 255, (48, 48), dtype=np.uint8)
            Image.fromarray(img).save(buf, "PNG")
            uploader.upload(f"slice{i}.png", buf.getvalue(), "image/png")
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    labels = {m.label: m.value for m in at.metric}
    probability = float(labels["Scan-level probability"])
    assert 0.0 <= probability <= 1.0
    assert any(label.startswith("Call at threshold") for label in labels)
    captions = [c for img in at.image for c in img.captions]
    assert any(c.startswith("Slice ") for c in captions)  # the viewer
    assert any("raised the COVID-19 score" in c for c in captions)  # the heat map
    if kind != "png":
        slider = at.slider(key="slice")
        slider.set_value(1).run()
        assert not at.exception


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("scan.dcm", b"\x00" * 500, "cannot be used"),
        ("notes.txt", b"hello", "cannot be used"),
        ("broken.nii.gz", b"\x1f\x8b\x08\x00garbage", "cannot be used"),
        ("bomb.zip", None, "zip bomb"),
    ],
)
def test_bad_uploads_get_a_message_and_the_app_keeps_working(
    runs, cohort, monkeypatch, name, data, message
):
    if data is None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("a.dcm", b"\x00" * (40 * 2**20))
        data = buf.getvalue()
    at = _app(runs, monkeypatch, "Predict")
    at.selectbox(key="predict_run").set_value("eps3").run()
    at.get("file_uploader")[0].upload(name, data).run()
    assert not at.exception, at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    # the same session then takes a good scan
    at.get("file_uploader")[0].set_value([(*nifti_upload(cohort), "application/gzip")]).run()
    assert not at.exception and not at.error
    assert "Scan-level probability" in {m.label for m in at.metric}


def test_pages_without_runs_say_how_to_get_one(tmp_path, monkeypatch):
    for page in ("Models", "Privacy/utility", "Predict"):
        at = _app(tmp_path, monkeypatch, page)
        assert any("covidct train" in i.value for i in at.info)


def _all_text(at: AppTest) -> str:
    parts = [_texts(at)]
    parts += [str(s.value) for s in at.subheader] + [str(h.value) for h in at.header]
    parts += [str(e.label) for e in at.expander]
    parts += [img_caption for img in at.image for img_caption in img.captions]
    for frame in at.dataframe:
        parts.append(frame.value.to_csv())
    return "\n".join(parts)


def test_no_identifying_header_value_reaches_the_page(runs, cohort, identities, monkeypatch):
    at = _app(runs, monkeypatch, "Predict")
    at.selectbox(key="predict_run").set_value("eps3").run()
    at.get("file_uploader")[0].upload("study.zip", dicom_zip(cohort), "application/zip").run()
    assert "Scan-level probability" in {m.label for m in at.metric}
    assert not identity_leaks(_all_text(at), identities)


def test_a_non_ct_dicom_is_named_as_such(runs, monkeypatch):
    from pydicom.data import get_testdata_file

    mr = Path(get_testdata_file("MR_small.dcm", download=False))
    at = _app(runs, monkeypatch, "Predict")
    at.selectbox(key="predict_run").set_value("eps3").run()
    at.get("file_uploader")[0].upload("mr.dcm", mr.read_bytes()).run()
    assert not at.exception
    assert any("not CT" in e.value for e in at.error), [e.value for e in at.error]


def test_with_login_required_a_user_who_is_not_logged_in_sees_only_the_login_prompt(
    runs, monkeypatch
):
    monkeypatch.setenv("COVIDCT_RUNS", str(runs))
    monkeypatch.setenv("COVIDCT_LOGIN", "required")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert [b.label for b in at.button] == ["Log in"]
    assert len(at.sidebar.radio) == 0 and len(at.dataframe) == 0  # no page, no model list
    assert len(at.file_uploader) == 0
    assert "log in with your hospital account" in _texts(at)
    monkeypatch.delenv("COVIDCT_LOGIN")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert len(at.sidebar.radio) == 1 and not any(b.label == "Log in" for b in at.button)


def test_each_configured_identity_provider_gets_its_own_login_button(runs, monkeypatch):
    monkeypatch.setenv("COVIDCT_RUNS", str(runs))
    monkeypatch.setenv("COVIDCT_LOGIN", "required")
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "c",
        "microsoft": {"client_id": "i", "client_secret": "s", "server_metadata_url": "u"},
    }
    at.run()
    assert not at.exception, at.exception
    assert [b.label for b in at.button] == ["Log in with microsoft"]
    assert len(at.sidebar.radio) == 0


def test_a_decoder_panic_on_an_upload_is_a_message_not_a_traceback(runs, cohort, monkeypatch):
    """pyo3 panics (Rust decoders) derive from BaseException: the page still answers."""
    import app.views

    class PanicException(BaseException):
        pass

    def panics(*args, **kwargs):
        raise PanicException("called `Option::unwrap()` on a `None` value")

    monkeypatch.setattr(app.views, "predict_upload", panics)
    at = _app(runs, monkeypatch, "Predict")
    at.selectbox(key="predict_run").set_value("eps3").run()
    at.get("file_uploader")[0].upload("study.zip", dicom_zip(cohort), "application/zip").run()
    assert not at.exception, at.exception
    assert any("PanicException" in e.value for e in at.error), [e.value for e in at.error]
