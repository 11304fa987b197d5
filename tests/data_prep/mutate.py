"""A seeded mutator of valid DICOM series and NIfTI volumes: inputs broken in ways no test
planted, for ``tests/data_prep/test_fuzz.py`` and ``benchmarks/fuzz_prepare.py``.

Each case is one patient of its own (new PatientID and UIDs, or a new file name): a copy of a
good series with ONE file mutated, or a mutated NIfTI file. About one case in eight is left
intact as a control that must be prepared. Mutations: bit flips, truncation at structural
boundaries (after the preamble, inside the file meta group, at the pixel data element, inside
the pixels), header values (Rows, Columns, BitsAllocated, RescaleSlope/Intercept, PixelSpacing,
ImagePositionPatient, the transfer syntax, an element's VR or length), NIfTI dim, pixdim,
datatype, scl_slope/scl_inter and vox_offset.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

__all__ = ["Case", "make_cases"]

RESCALE = ["0", "nan", "inf", "-1", "1e30", "-0"]
SYNTAXES = [
    "1.2.840.10008.1.2.4.50",  # JPEG baseline on native pixels
    "1.2.840.10008.1.2.4.90",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99",  # deflated
    "9.9.9",  # unknown
]


@dataclass(frozen=True)
class Case:
    """One input of the fuzz run: where it is, whose it is, and what was done to it."""

    path: Path  # a series folder or a NIfTI file
    patient: str  # the id prepare will see (PatientID, or the NIfTI file's stem)
    mutation: str  # "control" for an intact copy
    source: Path  # the good series' folder or the good NIfTI file it was made from


def _dicom_mutations(
    rng: np.random.Generator, raw: bytes, ds: pydicom.Dataset
) -> tuple[str, bytes]:
    kind = rng.choice(
        [
            "bitflip",
            "truncate",
            "rows",
            "bits",
            "slope",
            "intercept",
            "spacing",
            "position",
            "syntax",
            "length",
            "vr",
        ]
    )
    data = bytearray(raw)
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 24))):
            i = int(rng.integers(0, len(data)))
            data[i] ^= 1 << int(rng.integers(0, 8))
        return "bitflip", bytes(data)
    if kind == "truncate":
        pixel = raw.rfind(b"\xe0\x7f\x10\x00")
        cuts = [
            0,
            64,
            132,
            140,
            200,
            max(132, pixel),
            pixel + 6,
            pixel + 12,
            (pixel + len(raw)) // 2,
            len(raw) - 1,
        ]
        cut = int(rng.choice([c for c in cuts if 0 <= c < len(raw)]))
        return f"truncate@{cut}", bytes(data[:cut])
    if kind == "length":  # an element's length field made huge or odd
        tags = [b"\x28\x00\x10\x00", b"\x28\x00\x30\x00", b"\x20\x00\x32\x00"]
        tag = tags[int(rng.integers(len(tags)))]  # (numpy would strip the trailing NUL)
        i = raw.find(tag)
        if i >= 0:
            length = int(rng.choice([0xFFFF, 0xFFFE, 1, 3, 0]))
            data[i + 6 : i + 8] = struct.pack("<H", length)
        return f"length{tag.hex()}", bytes(data)
    if kind == "vr":  # an element's VR replaced
        i = raw.find(b"\x28\x00\x10\x00US")
        if i >= 0:
            vrs = [b"DS", b"OB", b"SQ", b"UN", b"XX"]
            data[i + 4 : i + 6] = vrs[int(rng.integers(len(vrs)))]
        return "vr", bytes(data)
    if kind == "syntax":  # in the bytes: pydicom will not write native pixels so labelled
        i = raw.find(b"\x02\x00\x10\x00UI")
        if i >= 0:
            n = struct.unpack("<H", raw[i + 6 : i + 8])[0]
            uid = str(rng.choice(SYNTAXES)).encode()
            uid += b"\x00" * (len(uid) % 2)
            data[i + 6 : i + 8 + n] = struct.pack("<H", len(uid)) + uid
        return "syntax", bytes(data)
    with _lenient():
        name = _edit(rng, ds, str(kind))
    return name, _saved(ds)


def _edit(rng: np.random.Generator, ds: pydicom.Dataset, kind: str) -> str:
    """Header values set to what a broken file may hold; returns the mutation's name."""
    if kind == "rows":
        key = str(rng.choice(["Rows", "Columns"]))
        setattr(ds, key, int(rng.choice([0, 1, 7, 4096, 65535])))
    elif kind == "bits":
        ds.BitsAllocated = int(rng.choice([0, 1, 7, 12, 32, 64]))
    elif kind == "slope":
        ds.RescaleSlope = str(rng.choice(RESCALE))
        return f"slope={ds.RescaleSlope}"
    elif kind == "intercept":
        ds.RescaleIntercept = str(rng.choice(["nan", "inf", "-1e30"]))
    elif kind == "spacing":
        ds.PixelSpacing = list(rng.choice([["0", "0"], ["-1", "1"], ["nan", "1"], ["5", "5"]]))
    elif kind == "position":
        if rng.random() < 0.3 and "ImagePositionPatient" in ds:
            del ds.ImagePositionPatient
        else:
            ds.ImagePositionPatient = list(
                rng.choice([["nan", "0", "0"], ["0", "0", "1e9"], ["0", "0", "0"]])
            )
    return kind


@contextlib.contextmanager
def _lenient() -> Iterator[None]:
    """pydicom accepts and writes invalid values (e.g. DS "abc"): what a broken file holds."""
    settings = pydicom.config.settings
    before = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = before


def _saved(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    with _lenient():
        ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def _dicom_case(
    rng: np.random.Generator, files: list[Path], out: Path, n: int, seed: int, control: bool
) -> Case:
    pid = f"FUZZ{seed:03d}{n:05d}"
    folder = out / "dicom" / pid
    folder.mkdir(parents=True)
    study = generate_uid(entropy_srcs=[pid, "study"])
    series = generate_uid(entropy_srcs=[pid, "series"])
    victim = int(rng.integers(0, len(files)))
    mutation = "control"
    for i, src in enumerate(files):
        ds = pydicom.dcmread(src)
        ds.PatientID = pid
        ds.PatientName = pid
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[pid, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        raw = _saved(ds)
        if i == victim and not control:
            mutation, raw = _dicom_mutations(rng, raw, ds)
        (folder / f"{i:03d}.dcm").write_bytes(raw)
    return Case(folder, pid, mutation, files[0].parent)


def _nifti_case(
    rng: np.random.Generator, src: Path, out: Path, n: int, seed: int, control: bool
) -> Case:
    stem = f"fuzz{seed:03d}{n:05d}"
    raw = src.read_bytes()
    data = bytearray(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    mutation = "control"
    if not control:
        kind = str(
            rng.choice(["dim", "pixdim", "datatype", "scl", "vox_offset", "bitflip", "truncate"])
        )
        mutation = kind
        if kind == "dim":
            i = int(rng.integers(0, 8))
            data[40 + 2 * i : 42 + 2 * i] = struct.pack(
                "<h", int(rng.choice([0, -1, 1, 2, 7, 32767]))
            )
        elif kind == "pixdim":
            i = int(rng.integers(1, 4))
            value = float(rng.choice([0.0, -1.0, np.nan, np.inf, 1e30]))
            data[76 + 4 * i : 80 + 4 * i] = struct.pack("<f", value)
        elif kind == "datatype":
            code = int(rng.choice([0, 1, 2, 32, 128, 1536, 2304, 9999]))
            data[70:72] = struct.pack("<h", code)
        elif kind == "scl":
            at = int(rng.choice([112, 116]))
            data[at : at + 4] = struct.pack("<f", float(rng.choice([0.0, np.nan, np.inf, 1e30])))
        elif kind == "vox_offset":
            value = float(rng.choice([0.0, -5.0, 1e9, 352.5, 4096.0]))
            data[108:112] = struct.pack("<f", value)
        elif kind == "bitflip":
            for _ in range(int(rng.integers(1, 24))):
                i = int(rng.integers(0, len(data)))
                data[i] ^= 1 << int(rng.integers(0, 8))
        else:
            cut = int(rng.choice([10, 200, 348, 352, len(data) // 2, len(data) - 1]))
            data = data[:cut]
    path = out / "nifti" / f"{stem}.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(bytes(data), mtime=0))
    return Case(path, stem, mutation, src)


def make_cases(
    series: list[list[Path]], volumes: list[Path], out: Path, *, n_cases: int, seed: int
) -> list[Case]:
    """``n_cases`` cases under ``out`` (``out/dicom/<patient>/``, ``out/nifti/<stem>.nii.gz``),
    drawn from the good ``series`` (lists of DICOM files) and ``volumes`` (NIfTI files)."""
    rng = np.random.default_rng(seed)
    cases = []
    for n in range(n_cases):
        control = rng.random() < 0.125
        if volumes and (not series or rng.random() < 0.3):
            src = volumes[int(rng.integers(0, len(volumes)))]
            cases.append(_nifti_case(rng, src, out, n, seed, control))
        else:
            files = series[int(rng.integers(0, len(series)))]
            cases.append(_dicom_case(rng, files, out, n, seed, control))
    return cases


def labels_csv(cases: list[Case], path: Path) -> Path:
    """A label for every case (alternating), so that each can be prepared."""
    rows = ["patient_id,label"] + [f"{c.patient},{i % 2}" for i, c in enumerate(cases)]
    path.write_text("\n".join(rows) + "\n")
    return path
