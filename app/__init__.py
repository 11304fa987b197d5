"""The Streamlit dashboard: ``covidct dashboard`` or ``streamlit run app/dashboard.py``."""
