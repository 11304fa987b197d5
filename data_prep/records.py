"""A prepared job's two records, typed: the public one and the private one.

``JobRecord`` (``.state/jobs/<key>.json``) is what ``assemble`` builds the manifest and the
report from: pseudonyms, slice geometry, flags, reasons. It holds no identifier.
``PrivateJobRecord`` (``private/jobs/<key>.json``, a 0700 folder) holds the identifiers the
pseudonyms were made from and the source paths; only labels-by-identifier and the private
maps read it. Keeping them apart in the types is what keeps identifiers out of the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any

from data_prep.deid import UnitBasis


class JobStatus(StrEnum):
    OK = "ok"
    SKIPPED = "skipped"


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """What preparing one scan gave, by pseudonym (no identifier).

    Attributes:
        status: ok, or skipped with ``reason``.
        job: the job's key (a keyed digest of its inputs); ``input_ref`` names it in reports.
        kind: ``hu`` or ``gray8`` (a VolumeKind value).
        folder_label: the label of the class folder the scan sits in, if any.
        source_slices: the source index of each kept slice.
        positions_mm: each kept slice's position along the scan axis (None when unknown).
        file_skips: (source index, reason) for images of a slice-image job that were left out.
        unit_basis: what a "patient" is for this scan (``data_prep.deid.UnitBasis``).
    """

    status: JobStatus
    reason: str = ""
    job: str = ""
    input_ref: str = ""
    kind: str = ""
    volume_id: str = ""
    patient_id: str = ""
    study_id: str = ""
    folder_label: int | None = None
    n_slices: int = 0
    source_slices: tuple[int, ...] = ()
    source_n_slices: int = 0
    positions_mm: tuple[float | None, ...] = ()
    spacing_mm: tuple[float | None, ...] = ()
    flags: tuple[str, ...] = ()
    file_skips: tuple[tuple[int, str], ...] = ()
    unit_basis: str = UnitBasis.UNKNOWN.value

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.OK

    @classmethod
    def skipped(cls, reason: str) -> JobRecord:
        return cls(status=JobStatus.SKIPPED, reason=reason)

    def saved_as(self, *, job: str, input_ref: str) -> JobRecord:
        return replace(self, job=job, input_ref=input_ref)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_json(cls, data: Any) -> JobRecord:
        """A record as saved (also by older versions: missing fields take their defaults).

        Raises:
            ValueError: not a record.
        """
        values = _known_fields(cls, data)
        try:
            values["status"] = JobStatus(str(values.get("status")))
            for name in ("source_slices", "positions_mm", "spacing_mm", "flags"):
                values[name] = tuple(values.get(name, ()))
            values["file_skips"] = tuple((int(i), str(r)) for i, r in values.get("file_skips", ()))
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"not a job record ({err})") from err


@dataclass(frozen=True, kw_only=True)
class PrivateJobRecord:
    """The identifiers behind one job's pseudonyms. Written only under ``private/``.

    Attributes:
        kind: the job's kind (dicom, nifti, images).
        sources: the job's source paths.
        patient_key: the identifier the patient pseudonym was made from (a DICOM PatientID, a
            file or folder name); None when the scan was skipped before it was read.
        study_key: the StudyInstanceUID, when known.
    """

    kind: str
    sources: tuple[str, ...] = ()
    patient_key: str | None = None
    study_key: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> PrivateJobRecord:
        """Raises ValueError when ``data`` is not a record."""
        values = _known_fields(cls, data)
        values["sources"] = tuple(values.get("sources", ()))
        try:
            return cls(**values)
        except TypeError as err:
            raise ValueError(f"not a private job record ({err})") from err


def _known_fields(cls: type, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"not a record: {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}
