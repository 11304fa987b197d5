"""covidct's error classes (the base lives in data_prep, which may not import covidct)."""

from data_prep.errors import ConfigError, CovidCTError, InputError, LabelError

__all__ = ["ConfigError", "CovidCTError", "InputError", "LabelError"]
