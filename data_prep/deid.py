"""De-identification: keyed pseudonyms and the header fields that must never be written.

Pseudonyms are HMAC-SHA256 of the source identifier under a random per-dataset key kept in
``PREP/private/``.  Without the key, a pseudonym cannot be linked back to a patient even by someone
who can enumerate candidate MRNs (a plain hash could be brute-forced over the MRN space).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from data_prep.atomic import atomic_write_bytes
from data_prep.prepared import PrepFolder

# DICOM keywords whose values identify a patient, a visit or staff (after PS3.15 Annex E's basic
# profile).  No value of these is ever written outside PREP/private/.
IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "MedicalRecordLocator",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "StationName",
    "DeviceSerialNumber",
)


class UnitBasis(enum.Enum):
    """What a prepared "patient" really is: how prepare decided whose scan it is.

    Only ``DICOM_PATIENT_ID`` names a person (as far as the hospital's records do); every other
    basis is a fallback, and a privacy guarantee "per patient" then covers that unit (a study, a
    file, a folder, an image), not necessarily the person. Written to the manifest (no
    identifier: only the kind of basis) so that training and its report can say so.
    """

    DICOM_PATIENT_ID = "dicom_patient_id"
    DICOM_STUDY = "dicom_study"  # no PatientID: each study is its own unit
    NIFTI_FILE = "nifti_file"  # the file name stands for the patient
    NIFTI_FOLDER = "nifti_folder"  # the folder of a file named like others stands for it
    IMAGE_FOLDER = "image_folder"  # a folder of slice images stands for the patient
    IMAGE_PATTERN = "image_pattern"  # --image-patient-regex on the file names
    SINGLE_IMAGE = "single_image"  # a loose slice image is its own unit
    UNKNOWN = "unknown"  # prepared before covidct recorded the basis

    @property
    def is_person(self) -> bool:
        return self is UnitBasis.DICOM_PATIENT_ID

    @property
    def covers(self) -> str:
        """What one unit of this basis is, in a few words."""
        return {
            UnitBasis.DICOM_PATIENT_ID: "a patient (DICOM PatientID)",
            UnitBasis.DICOM_STUDY: "a study (DICOM series without PatientID)",
            UnitBasis.NIFTI_FILE: "a NIfTI file (its name stands for the patient)",
            UnitBasis.NIFTI_FOLDER: "a folder holding a NIfTI file",
            UnitBasis.IMAGE_FOLDER: "a folder of slice images",
            UnitBasis.IMAGE_PATTERN: "the images whose names share a --image-patient-regex match",
            UnitBasis.SINGLE_IMAGE: "one slice image",
            UnitBasis.UNKNOWN: "unknown (prepared by an older covidct: re-run covidct prepare)",
        }[self]


def load_or_create_key(private_dir: Path) -> bytes:
    """Return the dataset's pseudonym key, creating it (owner-only permissions) on first use."""
    path = private_dir / PrepFolder.KEY
    if path.exists():
        key = bytes.fromhex(path.read_text().strip())
        if len(key) < 16:
            raise ValueError(f"pseudonym key in {path} is too short")
        return key
    private_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(private_dir, 0o700)
    key = secrets.token_bytes(32)
    atomic_write_bytes(path, key.hex().encode(), mode=0o600)
    return key


class Pseudonymizer:
    """Keyed, deterministic pseudonyms: the same source id always maps to the same pseudonym."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def digest(self, namespace: str, value: str, *, length: int = 16) -> str:
        mac = hmac.new(self._key, f"{namespace}\x00{value}".encode(), hashlib.sha256)
        return mac.hexdigest()[:length]

    def patient(self, patient_key: str) -> str:
        return "P-" + self.digest("patient", patient_key)

    def study(self, study_key: str) -> str:
        return "S-" + self.digest("study", study_key)

    def volume(self, volume_key: str) -> str:
        return "V-" + self.digest("volume", volume_key)

    def input_ref(self, path: str) -> str:
        return "in-" + self.digest("input", path, length=12)
