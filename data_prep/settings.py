"""The settings of ``covidct prepare``, in one place: how slices are made (``SliceSettings``,
fixed for the life of a prepared folder and recorded in its dataset.json and in every run) and
how a preparation runs (``PrepConfig``). Every ingestion module imports them from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["CROPS", "Crop", "PrepConfig", "SliceSettings"]


class Crop(StrEnum):
    """``prepare.slices.crop``: the whole field of view, or a square around the lungs."""

    NONE = "none"
    LUNGS = "lungs"


CROPS = tuple(c.value for c in Crop)


@dataclass(frozen=True)
class SliceSettings:
    """How slices are made; stored in dataset.json and fixed for the life of a PREP folder."""

    image_size: int = 96
    window_level: float = -600.0
    window_width: float = 1500.0
    lung_only: bool = True
    min_lung_fraction: float = 0.02
    # "lungs": crop each scan to a square (in mm) around its lungs plus a margin before
    # resizing, so the lungs fill more of the image (on the phantoms about 1.3x wider); "none":
    # the whole field of view, the default: cropping did not speed learning on the demo cohort
    # (benchmarks/learnability.py).
    # Prepared folders from before this setting existed were made with "none".
    crop: Crop = Crop.NONE
    # True: everything outside the lung field (body wall, bone, heart, mediastinum, table)
    # becomes air, so a model sees the lungs and what lies in them (slicing.lung_field). The
    # default model's attenuation features need it: unmasked, the body wall's edges fill their
    # bands.
    mask_outside_lungs: bool = True

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"slices.crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        object.__setattr__(self, "crop", Crop(self.crop))  # a recorded "lungs" is Crop.LUNGS

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the crop as its value."""
        return {**asdict(self), "crop": self.crop.value}

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> SliceSettings:
        """The settings a ``dataset.json`` or ``run.json`` records. Settings added later take
        the value older folders were made with (``RECORDED_BEFORE``), not today's default."""
        return cls(**{**cls().as_dict(), **RECORDED_BEFORE, **recorded})


# what folders prepared before a setting existed were made with (its default then)
RECORDED_BEFORE: dict[str, Any] = {"crop": "none", "mask_outside_lungs": False}


@dataclass(frozen=True)
class PrepConfig:
    """Options of ``prepare``.

    Attributes:
        slices: how slices are windowed, selected and resized (fixed per PREP folder).
        split: train, validation, test fractions of patients.
        seed: seed of the split.
        workers: processes; 0 = all cores.
        image_patient_regex: regex whose first group, on an image's file name, is its patient.
        job_timeout_s: with several workers, a scan whose reading takes longer than this is
            taken to hang (a decoder stuck on a corrupt file): it is stopped and reported.
    """

    slices: SliceSettings = field(default_factory=SliceSettings)
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    workers: int = 0
    image_patient_regex: str = ""
    job_timeout_s: float = 900.0
