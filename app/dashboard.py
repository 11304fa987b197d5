"""covidct dashboard: the entry only wires the pages (see app/views.py).

covidct dashboard --runs runs/            # or:
COVIDCT_RUNS=runs/ streamlit run app/dashboard.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `streamlit run` from anywhere

from app import auth, views

st.set_page_config(page_title="covidct", layout="wide")
auth.gate()  # with login required, nothing below runs for a user who is not logged in
root = Path(os.environ.get("COVIDCT_RUNS", "runs"))
PAGES = {
    "Models": views.models_page,
    "Privacy/utility": views.curves_page,
    "Predict": views.predict_page,
}
with st.sidebar:
    st.title("covidct")
    st.caption("Differentially private chest-CT COVID-19 classification")
    page = st.radio("Page", list(PAGES), key="page")
    st.caption(f"Runs folder: `{root}`")
PAGES[page](root)
