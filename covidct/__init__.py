"""covidct: differentially private chest-CT COVID-19 classification."""

__version__ = "0.1.0"
