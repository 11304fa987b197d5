"""Exception classes shared by the data-preparation code.

``CovidCTError`` is the base of every error covidct raises on purpose; the CLI turns it into a
one-line message and exit code 2.  It lives here because ``data_prep`` must not import ``covidct``
(imports run app -> covidct -> data_prep); ``covidct.errors`` re-exports it.
"""

from __future__ import annotations


class CovidCTError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class InputError(CovidCTError):
    """One input (file, series, folder) cannot be used; the rest of a batch goes on."""


class NotAnImageError(InputError):
    """The file is not an image this reader understands (random bytes, a DICOMDIR, a report)."""


class UnsupportedScanError(InputError):
    """The file is a valid image but not a usable CT scan (localizer, other modality, 2D only)."""


class PixelDecodeError(InputError):
    """The header is readable but the pixel data cannot be decoded."""


class GeometryError(InputError):
    """Slice positions or orientations make no consistent volume."""


class LabelError(CovidCTError):
    """A label file is malformed or names labels covidct does not understand."""


class ConfigError(CovidCTError):
    """A configuration file or ``--set`` override is invalid."""
