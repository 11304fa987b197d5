"""Write a deterministic synthetic chest-CT cohort as real DICOM series and NIfTI files.

No chest CT can be downloaded where covidct is built and tested, so the demo and the tests run on
phantoms (:mod:`data_prep.synthetic.phantom`) written the way hospitals export them: one folder
per patient and study, unordered file names (some without an extension), rescale tags that must
be applied, a localizer series next to the axial one, and realistic identifying header values
that the de-identification downstream must remove.

Layout of ``write_cohort(out_dir)``::

    dicom/<patient_id>/<study>/<series>/<file>    DICOM patients (axial series, some localizers)
    nifti/<patient_id>.nii.gz                     NIfTI patients
    labels.csv        patient_id,label            1 = COVID-positive, 0 = negative
    truth.csv         patient_id,slice_index,lesion,burden   (slice_index in canonical z order)
    identities.json   the "hospital side": every identifying value that was written
    .covidct-synth.json   the settings that shaped the files, the phantom style among them

The cohort depends only on the configuration: each patient draws from its own
``SeedSequence(seed, spawn_key=...)``, so any number of worker processes gives identical bytes.
"""

from __future__ import annotations

import csv
import enum
import gzip
import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from data_prep.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from data_prep.errors import ConfigError, CovidCTError
from data_prep.synthetic.phantom import Phantom, PhantomStyle, make_phantom

logger = logging.getLogger(__name__)

__all__ = [
    "CohortFormat",
    "CohortSummary",
    "Identity",
    "Phantom",
    "PhantomStyle",
    "SynthConfig",
    "dicom_variant",
    "make_phantom",
    "patient_rng",
    "write_cohort",
    "write_dicom_series",
    "write_nifti",
]

MARKER = ".covidct-synth.json"  # marks a folder this module owns (safe to overwrite)
_ANATOMY_STREAM, _ASSIGN_STREAM, _IDENTITY_STREAM = 0, 1, 2
# nibabel's world is RAS; DICOM's (and the canonical volume's) is LPS: negate x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class CohortFormat(enum.Enum):
    """Which file formats the cohort uses."""

    MIXED = "mixed"  # patient i is DICOM when i % 3 != 2, else NIfTI
    DICOM = "dicom"
    NIFTI = "nifti"


@dataclass(frozen=True)
class SynthConfig:
    """Options of ``covidct synth``.

    Attributes:
        n_patients: number of patients (one scan each).
        n_slices: axial slices per scan, covering the lungs from below the base to the apex.
        matrix: in-plane pixels (square).
        positive_fraction: share of COVID-positive patients.
        mild_fraction: share of positives with mild disease (the rest are severe).
        seed: the cohort is a pure function of the configuration.
        formats: file formats (MIXED: DICOM when i % 3 != 2, else NIfTI).
        workers: processes; 0 = all cores.
        style: which phantom generator ("site": scanner, population, lesion appearance);
            A is the original, B another one to check that a model did not learn the generator.
    """

    n_patients: int = 200
    n_slices: int = 16
    matrix: int = 64
    positive_fraction: float = 0.5
    mild_fraction: float = 0.5
    seed: int = 0
    formats: CohortFormat = CohortFormat.MIXED
    workers: int = 0
    style: PhantomStyle = PhantomStyle.A


@dataclass(frozen=True)
class DicomVariant:
    """How one DICOM patient's files are written (spread so readers meet every case)."""

    with_extension: bool
    rescale_intercept: int
    add_localizer: bool


@dataclass(frozen=True)
class CohortSummary:
    """What ``write_cohort`` wrote. ``identities`` is PRIVATE (the hospital side)."""

    out_dir: Path
    n_patients: int
    n_positive: int
    n_mild: int
    n_severe: int
    n_dicom: int
    n_nifti: int
    n_files: int
    identities: list[Identity] = field(repr=False)

    @property
    def n_negative(self) -> int:
        return self.n_patients - self.n_positive


@dataclass(frozen=True)
class _Plan:
    index: int
    identity: Identity
    positive: bool
    burden: str
    dicom: DicomVariant | None  # None: NIfTI


def patient_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of patient ``index``'s anatomy (independent of every other patient)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_ANATOMY_STREAM, index)))


def dicom_variant(dicom_index: int) -> DicomVariant:
    """File variant of the ``dicom_index``-th DICOM patient of a cohort.

    Every other patient stores HU + 1024 (intercept -1024), every 5th has no file extension and
    every 4th has a localizer series; patient 0 gets all three, so tiny cohorts cover them.
    """
    return DicomVariant(
        with_extension=dicom_index % 5 != 0,
        rescale_intercept=-1024 if dicom_index % 2 == 0 else 0,
        add_localizer=dicom_index % 4 == 0,
    )


# --- identities -------------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST_F = _words(
    "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Lisa Margaret "
    "Sandra Ashley Dorothy Kimberly Emily Donna Michelle Carol Amanda Melissa Deborah Laura "
    "Rebecca Sharon Cynthia Kathleen Amy Angela Helen Anna Brenda Pamela Nicole Samantha Katherine "
    "Christine Emma Ruth Olivia Maria Sofia Isabel Chloe Fatima Aisha Mei Yuki Priya Ingrid Greta"
)
_FIRST_M = _words(
    "James Robert John Michael David William Richard Joseph Thomas Charles Christopher Daniel "
    "Matthew Anthony Mark Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy "
    "Ronald Edward Jason Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin Scott "
    "Brandon Benjamin Samuel Gregory Alexander Patrick Frank Raymond Jack Dennis Jerry Tyler Aaron "
    "Jose Carlos Luis Ahmed Omar Wei Hiroshi Raj Lars Pierre Giovanni Mateo"
)
_LAST = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
    "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips "
    "Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers "
    "Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson "
    "Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo "
    "Sanders Patel Myers Long Ross Foster Jimenez Okafor Novak Schmidt Rossi Dubois Tanaka Chen "
    "Kowalski Lindqvist OBrien Mbeki Haddad Singh Yamamoto Petrov"
)
# (name, street address, city, state, zip, station prefix)
_HOSPITALS = (
    ("St. Mary's General Hospital", "1200 Maple Avenue", "Springfield", "IL", "62701", "SMGH"),
    ("Riverside University Medical Center", "450 River Road", "Riverside", "CA", "92501", "RUMC"),
    ("Lakeview Regional Hospital", "88 Lakeshore Drive", "Madison", "WI", "53703", "LVRH"),
    ("Mercy Heart and Lung Institute", "3100 Elm Street", "Columbus", "OH", "43215", "MHLI"),
    ("Northgate Community Hospital", "77 Northgate Boulevard", "Portland", "OR", "97205", "NGCH"),
    ("Harborview Medical Center", "325 Ninth Avenue", "Seattle", "WA", "98104", "HVMC"),
    ("Saint Luke's Presbyterian Hospital", "901 Oak Lane", "Denver", "CO", "80204", "SLPH"),
    ("Valley Baptist Medical Center", "2101 Pease Street", "Harlingen", "TX", "78550", "VBMC"),
    ("Good Samaritan Hospital", "15 Hillcrest Avenue", "Baltimore", "MD", "21239", "GSHB"),
    ("Eastside Veterans Medical Center", "640 Center Street", "Albany", "NY", "12208", "EVMC"),
)


@dataclass(frozen=True)
class Identity:
    """Realistic identifying values of one patient's study (PRIVATE: what de-identification
    must remove).  Names are DICOM person names (``Family^Given^Middle``)."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    accession_number: str
    institution_name: str
    institution_address: str
    referring_physician: str
    operators_name: str
    study_date: str
    study_time: str
    study_id: str
    study_instance_uid: str
    station_name: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def make_identities(seed: int, n: int) -> list[Identity]:
    """``n`` distinct identities (unique patient ids, accession numbers), a function of ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_IDENTITY_STREAM,)))
    used_ids: set[str] = set()
    used_acc: set[str] = set()

    def unique(prefix: str, digits: int, used: set[str]) -> str:
        while True:
            value = f"{prefix}{int(rng.integers(10 ** (digits - 1), 10**digits))}"
            if value not in used:
                used.add(value)
                return value

    def person(first: tuple[str, ...] | list[str]) -> tuple[str, str]:
        return str(rng.choice(_LAST)), str(rng.choice(first))

    out = []
    start = np.datetime64("2020-03-01")
    for i in range(n):
        sex = "F" if rng.random() < 0.48 else "M"
        last, first = person(_FIRST_F if sex == "F" else _FIRST_M)
        middle = chr(ord("A") + int(rng.integers(0, 26)))
        study_day = start + np.timedelta64(int(rng.integers(0, 1036)), "D")
        age_days = int(rng.integers(18 * 365, 95 * 365))
        hosp = _HOSPITALS[int(rng.integers(0, len(_HOSPITALS)))]
        ref_last, ref_first = person(_FIRST_F + _FIRST_M)
        op_last, op_first = person(_FIRST_F + _FIRST_M)
        secs = int(rng.integers(6 * 3600, 23 * 3600))
        out.append(
            Identity(
                patient_name=f"{last}^{first}^{middle}",
                patient_id=unique("MRN", 7, used_ids),
                birth_date=str(study_day - np.timedelta64(age_days, "D")).replace("-", ""),
                sex=sex,
                accession_number=unique("A", 9, used_acc),
                institution_name=hosp[0],
                institution_address=f"{hosp[1]}, {hosp[2]}, {hosp[3]} {hosp[4]}, USA",
                referring_physician=f"{ref_last}^{ref_first}^^Dr.",
                operators_name=f"{op_last}^{op_first}",
                study_date=str(study_day).replace("-", ""),
                study_time=f"{secs // 3600:02d}{secs // 60 % 60:02d}{secs % 60:02d}",
                study_id=str(int(rng.integers(1000, 99999))),
                study_instance_uid=_uid(seed, "study", i),
                station_name=f"{hosp[5]}CT{int(rng.integers(1, 4)):02d}",
            )
        )
    return out


# --- single files -----------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    # No fsync: a cohort has tens of thousands of files, is rebuilt bit for bit from its seed,
    # and fsync per file would dominate the run time on slow disks.
    atomic_write_bytes(path, data, durable=False)


def _uid(*parts: object) -> str:
    """A UID that is a pure function of ``parts`` (runs are reproducible)."""
    return str(generate_uid(entropy_srcs=["covidct-synth", *(str(p) for p in parts)]))


def _ds(value: float) -> str:
    """Decimal string (DICOM DS) of ``value``: the shortest one that reads back exactly.

    Axial geometry lies on a 1/64 mm grid, so its strings are short (<= 16 characters) and
    exact: DICOM and NIfTI readers recover bit-identical positions.
    """
    text = np.format_float_positional(float(value), trim="-")
    if len(text) > 16:  # off the grid (localizer rows): the closest 16-character value
        text = format_number_as_ds(float(value))
    return text


def _base_dataset(identity: Identity, series_uid: str, frame_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = identity.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = identity.study_time
    ds.AccessionNumber = identity.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = "covidct synthetic phantom"
    ds.InstitutionName = identity.institution_name
    ds.InstitutionAddress = identity.institution_address
    ds.ReferringPhysicianName = identity.referring_physician
    ds.StationName = identity.station_name
    ds.StudyDescription = "CT CHEST WITHOUT CONTRAST"
    ds.OperatorsName = identity.operators_name
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.birth_date
    ds.PatientSex = identity.sex
    ds.BodyPartExamined = "CHEST"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = identity.study_id
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def _encode(ds: Dataset, sop_uid: str, pixels: np.ndarray) -> bytes:
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _file_name(sop_uid: str, with_extension: bool) -> str:
    # Names must not reveal slice order: readers have to sort by position.
    if with_extension:
        return f"{sop_uid}.dcm"
    return hashlib.sha256(sop_uid.encode()).hexdigest()[:16].upper()


def _stored(hu: np.ndarray, intercept: int) -> np.ndarray:
    stored = hu.astype(np.int32) - intercept
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(f"HU - intercept {intercept} does not fit int16")
    return stored.astype(np.int16)


def write_dicom_series(
    phantom: Phantom,
    series_dir: Path,
    *,
    identity: Identity,
    with_extension: bool = True,
    rescale_intercept: int = 0,
    add_localizer: bool = False,
) -> list[Path]:
    """Write a phantom as one axial CT series (one file per slice), optionally with a localizer.

    Slice ``k`` holds ``phantom.hu[k] - rescale_intercept`` with ImagePositionPatient
    ``origin + k * spacing_z`` along +z and ImageOrientationPatient [1,0,0,0,1,0]: rows run
    toward Posterior, columns toward the patient's Left, as in :mod:`data_prep.volume`.

    Args:
        phantom: the volume to write.
        series_dir: folder of the axial series (created).  The localizer, if any, goes into the
            sibling folder ``<series_dir.name>_localizer``.
        identity: identifying values and the StudyInstanceUID; UIDs derive from it, so the
            same identity gives the same files.
        with_extension: file names end in ``.dcm``; otherwise 16 hex digits, no extension.
        rescale_intercept: RescaleIntercept tag; stored values are HU minus this.
        add_localizer: also write a one-image coronal LOCALIZER series in the same study.

    Returns:
        The axial files in slice order, then the localizer file if written.
    """
    nz = phantom.hu.shape[0]
    dz, dy, dx = phantom.spacing
    ox, oy, oz = phantom.origin
    study = identity.study_instance_uid
    frame_uid = _uid(study, "frame")
    ds = _base_dataset(identity, _uid(study, "series", "axial"), frame_uid)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    thickness = dz if phantom.slice_thickness is None else phantom.slice_thickness
    ds.SeriesDescription = f"CHEST AXIAL {thickness:.1f}mm"
    ds.SeriesNumber = 2
    ds.SliceThickness = _ds(thickness)
    ds.SpacingBetweenSlices = _ds(dz)
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [_ds(dy), _ds(dx)]  # row spacing (along y), column spacing (along x)
    ds.RescaleIntercept = str(int(rescale_intercept))
    ds.WindowCenter = ["-600", "40"]
    ds.WindowWidth = ["1500", "400"]
    ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
    series_dir.mkdir(parents=True, exist_ok=True)
    stored = _stored(phantom.hu, rescale_intercept)
    paths: list[Path] = []
    for k in range(nz):
        z = oz + k * dz
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(ox), _ds(oy), _ds(z)]
        ds.SliceLocation = _ds(z)
        sop = _uid(study, "axial", k)
        path = series_dir / _file_name(sop, with_extension)
        _write_atomic(path, _encode(ds, sop, stored[k]))
        paths.append(path)
    if add_localizer:
        folder = series_dir.with_name(f"{series_dir.name}_localizer")
        paths.append(
            _write_localizer(
                phantom,
                folder,
                identity,
                frame_uid=frame_uid,
                with_extension=with_extension,
                rescale_intercept=rescale_intercept,
            )
        )
    return paths


def _write_localizer(
    phantom: Phantom,
    folder: Path,
    identity: Identity,
    *,
    frame_uid: str,
    with_extension: bool,
    rescale_intercept: int,
) -> Path:
    """A coronal projection radiograph (scout): what a scanner stores next to the axial series."""
    nz = phantom.hu.shape[0]
    dz, _, dx = phantom.spacing
    ox, oy, oz = phantom.origin
    reps = max(1, round(dz / dx))  # near-square pixels
    proj = np.rint(phantom.hu.astype(np.float32).mean(axis=1))[::-1]  # top row = superior
    image = np.repeat(proj, reps, axis=0).astype(np.int16)
    row_step = dz / reps
    top = oz + (nz - 0.5) * dz - row_step / 2
    study = identity.study_instance_uid
    ds = _base_dataset(identity, _uid(study, "series", "localizer"), frame_uid)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesDescription = "TOPOGRAM"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    # Rows run toward the feet (-z), columns toward the patient's left (+x).
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    mid_y = oy + phantom.hu.shape[1] * phantom.spacing[1] / 2
    ds.ImagePositionPatient = [_ds(ox), _ds(mid_y), _ds(top)]
    ds.PixelSpacing = [_ds(row_step), _ds(dx)]
    ds.RescaleIntercept = str(int(rescale_intercept))
    ds.WindowCenter = "-500"
    ds.WindowWidth = "1000"
    folder.mkdir(parents=True, exist_ok=True)
    sop = _uid(study, "localizer", 0)
    path = folder / _file_name(sop, with_extension)
    _write_atomic(path, _encode(ds, sop, _stored(image, rescale_intercept)))
    return path


def nifti_affine(phantom: Phantom) -> np.ndarray:
    """RAS affine of the NIfTI array, which is stored as (x, y, z) = ``hu.transpose(2, 1, 0)``."""
    dz, dy, dx = phantom.spacing
    lps = np.zeros((4, 4))
    lps[0, 0], lps[1, 1], lps[2, 2] = dx, dy, dz
    lps[:3, 3] = phantom.origin
    lps[3, 3] = 1.0
    ras: np.ndarray = _LPS_TO_RAS @ lps
    return ras


def write_nifti(phantom: Phantom, path: Path) -> Path:
    """Write a phantom as NIfTI-1 (int16 HU, no scaling; gzip when the name ends in .gz).

    The array is stored x-fastest as (x, y, z) with both qform and sform (code 1, scanner) set
    to the RAS affine of the DICOM geometry, so every voxel has the same world position as in
    :func:`write_dicom_series`.  The gzip header carries no time stamp (reproducible bytes).

    Returns:
        ``path``.
    """
    data = np.ascontiguousarray(phantom.hu.transpose(2, 1, 0), dtype=np.int16)
    img = nib.Nifti1Image(data, nifti_affine(phantom))
    img.set_data_dtype(np.int16)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    img.header["descrip"] = b"covidct synthetic chest CT (HU)"
    raw = img.to_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    _write_atomic(path, raw)
    return path


# --- the cohort -------------------------------------------------------------------------------


def _validate(config: SynthConfig) -> None:
    problems = []
    if config.n_patients < 1:
        problems.append(f"n_patients must be >= 1, got {config.n_patients}")
    if config.n_slices < 2:
        problems.append(f"n_slices must be >= 2, got {config.n_slices}")
    if config.matrix < 8:
        problems.append(f"matrix must be >= 8, got {config.matrix}")
    for name in ("positive_fraction", "mild_fraction"):
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            problems.append(f"{name} must be between 0 and 1, got {value}")
    if config.seed < 0:
        problems.append(f"seed must be >= 0, got {config.seed}")
    if config.workers < 0:
        problems.append(f"workers must be >= 0 (0 = all cores), got {config.workers}")
    try:
        PhantomStyle(config.style)
    except ValueError:
        choices = ", ".join(m.value for m in PhantomStyle)
        problems.append(f"style must be one of {choices}, got {config.style!r}")
    if problems:
        raise ConfigError("invalid synth settings: " + "; ".join(problems))


def _plan(config: SynthConfig) -> list[_Plan]:
    n = config.n_patients
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_ASSIGN_STREAM,)))
    n_pos = round(config.positive_fraction * n)
    n_mild = round(config.mild_fraction * n_pos)
    # A random order decides the classes, so labels do not follow the format or file variants.
    rank = np.empty(n, dtype=np.int64)
    rank[rng.permutation(n)] = np.arange(n)
    identities = make_identities(config.seed, n)
    plans: list[_Plan] = []
    n_dicom = 0
    for i in range(n):
        is_dicom = config.formats == CohortFormat.DICOM or (
            config.formats == CohortFormat.MIXED and i % 3 != 2
        )
        variant = dicom_variant(n_dicom) if is_dicom else None
        n_dicom += int(is_dicom)
        r = int(rank[i])
        burden = "mild" if r < n_mild else "severe" if r < n_pos else "none"
        plans.append(_Plan(i, identities[i], burden != "none", burden, variant))
    return plans


def _patient_paths(out_dir: Path, plan: _Plan) -> tuple[Path, Path]:
    """(top-level path owned by the patient, axial series folder or NIfTI file)."""
    ident = plan.identity
    if plan.dicom is None:
        path = out_dir / "nifti" / f"{ident.patient_id}.nii.gz"
        return path, path
    top = out_dir / "dicom" / ident.patient_id
    study = top / f"{ident.study_date}_{ident.accession_number}"
    return top, study / "2_chest_axial"


def _write_patient(
    plan: _Plan, out_dir: Path, seed: int, n_slices: int, matrix: int, style: PhantomStyle
) -> tuple[int, list[bool], int]:
    """Worker: draw and write one patient; returns (index, lesion per slice, files written)."""
    phantom = make_phantom(
        patient_rng(seed, plan.index),
        n_slices=n_slices,
        matrix=matrix,
        positive=plan.positive,
        burden=plan.burden,
        style=style,
    )
    top, target = _patient_paths(out_dir, plan)
    if plan.dicom is None:
        written = [write_nifti(phantom, target)]
    else:
        written = write_dicom_series(
            phantom,
            target,
            identity=plan.identity,
            with_extension=plan.dicom.with_extension,
            rescale_intercept=plan.dicom.rescale_intercept,
            add_localizer=plan.dicom.add_localizer,
        )
        # A rerun over an older cohort: drop files this run did not write (other slice counts,
        # other variants, temp files of an interrupted run) so each series stays consistent.
        keep = set(written)
        for path in sorted(top.rglob("*"), reverse=True):
            if path.is_dir():
                if not any(path.iterdir()):
                    path.rmdir()
            elif path not in keep:
                path.unlink()
    return plan.index, [bool(v) for v in phantom.lesion_slices], len(written)


def _claim(out_dir: Path, config: SynthConfig) -> None:
    """Refuse a non-empty folder that is not a cohort of ours; then mark it as ours."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CovidCTError(f"{out_dir} is a file; synth needs a folder to write the cohort into")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise CovidCTError(
            f"{out_dir} is not empty and holds no synthetic cohort (no {MARKER}); "
            "choose a new or empty --out folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # Only what shapes the files: the worker count does not (same bytes for any number).
    # The style is recorded here: it is what tells a reader which generator made the cohort.
    cfg = {**asdict(config), "formats": config.formats.value, "style": config.style.value}
    del cfg["workers"]
    atomic_write_json(out_dir / MARKER, {"format_version": 1, "config": cfg})


def _remove_stale(out_dir: Path, plans: list[_Plan]) -> None:
    """Delete patients of an earlier cohort in this folder that the new one does not have."""
    owned = {_patient_paths(out_dir, p)[0] for p in plans}
    for sub in ("dicom", "nifti"):
        folder = out_dir / sub
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry in owned:
                continue
            logger.debug("removing %s: not part of the new cohort", entry.name)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _run(
    plans: list[_Plan], out_dir: Path, config: SynthConfig, progress: bool
) -> Iterator[tuple[int, list[bool], int]]:
    args = (out_dir, config.seed, config.n_slices, config.matrix, config.style)
    workers = min(config.workers or os.cpu_count() or 1, len(plans))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plans), desc="writing phantoms", unit="patient")
    try:
        if workers <= 1:
            for plan in plans:
                yield _write_patient(plan, *args)
                if bar is not None:
                    bar.update()
            return
        # forkserver, not fork: the caller may have started threads (TensorFlow, tqdm).
        ctx: multiprocessing.context.BaseContext
        if "forkserver" in multiprocessing.get_all_start_methods():
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["data_prep.synthetic.cohort"])
        else:
            ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures: list[Future[tuple[int, list[bool], int]]] = [
                pool.submit(_write_patient, plan, *args) for plan in plans
            ]
            try:
                for fut in as_completed(futures):
                    yield fut.result()
                    if bar is not None:
                        bar.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    finally:
        if bar is not None:
            bar.close()


def _csv(rows: Iterable[Iterable[object]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_cohort(out_dir: Path, config: SynthConfig, *, progress: bool = False) -> CohortSummary:
    """Write the synthetic cohort described by ``config`` into ``out_dir``.

    Patients are written in parallel (``config.workers`` processes); the files are identical for
    any number of workers.  Re-running into the same folder replaces the earlier cohort.

    Args:
        out_dir: an empty or new folder, or one holding an earlier synthetic cohort.
        config: cohort size, geometry, class balance, seed, formats and workers.
        progress: show a tqdm progress bar on stderr.

    Returns:
        Counts and the identities written (PRIVATE).

    Raises:
        ConfigError: invalid settings.
        CovidCTError: ``out_dir`` is a non-empty folder that holds no synthetic cohort.
    """
    _validate(config)
    config = replace(config, style=PhantomStyle(config.style))  # also accepts "a" / "b"
    out_dir = Path(out_dir)
    _claim(out_dir, config)
    plans = _plan(config)
    _remove_stale(out_dir, plans)
    lesions: dict[int, list[bool]] = {}
    n_files = 0
    for index, lesion_slices, n in _run(plans, out_dir, config, progress):
        lesions[index] = lesion_slices
        n_files += n
    ids = [p.identity.patient_id for p in plans]
    labels = [("patient_id", "label")] + [
        (i, int(p.positive)) for i, p in zip(ids, plans, strict=True)
    ]
    truth: list[tuple[object, ...]] = [("patient_id", "slice_index", "lesion", "burden")]
    for pid, plan in zip(ids, plans, strict=True):
        truth += [(pid, k, int(v), plan.burden) for k, v in enumerate(lesions[plan.index])]
    atomic_write_text(out_dir / "labels.csv", _csv(labels))
    atomic_write_text(out_dir / "truth.csv", _csv(truth))
    atomic_write_text(
        out_dir / "identities.json",
        json.dumps([p.identity.as_dict() for p in plans], indent=2) + "\n",
    )
    summary = CohortSummary(
        out_dir=out_dir,
        n_patients=len(plans),
        n_positive=sum(p.positive for p in plans),
        n_mild=sum(p.burden == "mild" for p in plans),
        n_severe=sum(p.burden == "severe" for p in plans),
        n_dicom=sum(p.dicom is not None for p in plans),
        n_nifti=sum(p.dicom is None for p in plans),
        n_files=n_files,
        identities=[p.identity for p in plans],
    )
    logger.info(
        "wrote %d patients (%d positive), %d files", len(plans), summary.n_positive, n_files
    )
    return summary
