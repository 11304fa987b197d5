"""Turn input paths into jobs (one scan each) and a list of inputs skipped with reasons.

Cheap work only: walking folders and reading DICOM headers.  Pixels are decoded later, in
parallel, by ``data_prep.pipeline``.  Everything here is PRIVATE (paths, patient ids): the
pipeline hashes what it keeps.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.deid import UnitBasis
from data_prep.errors import InputError
from data_prep.labels import class_folder_label, folder_label
from data_prep.readers.dicom import DicomHeader, probe_file, select_series
from data_prep.readers.images import is_image_name
from data_prep.readers.nifti import is_nifti_name, nifti_stem

# Files that sit next to scans in real exports and are not scans: ignored without complaint.
SIDE_FILE_SUFFIXES = frozenset({".csv", ".json", ".txt", ".md", ".xml", ".pdf", ".html", ".log"})


class JobKind:
    DICOM = "dicom"
    NIFTI = "nifti"
    IMAGES = "images"


@dataclass(frozen=True)
class Job:
    """One scan to prepare: a DICOM series, a NIfTI file, or one patient's slice images."""

    kind: str
    sources: tuple[str, ...]
    patient_key: str  # PRIVATE
    study_key: str = ""  # PRIVATE
    series_key: str = ""  # PRIVATE: identity of the volume within the study
    folder_label: int | None = None
    headers: tuple[DicomHeader, ...] = ()
    unit_basis: UnitBasis = UnitBasis.UNKNOWN  # how patient_key was decided (not identifying)


@dataclass(frozen=True)
class Skip:
    """An input that was not used (or only noted), with a reason that names no identifier."""

    path: str  # PRIVATE: shown on the console, mapped to a reference in the report
    what: str  # "file", "series", "folder"
    reason: str


@dataclass
class Discovery:
    jobs: list[Job] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    files_seen: int = 0


def walk_files(root: Path, exclude: Path | None) -> Iterator[Path]:
    """Every file under ``root`` in a stable order, skipping hidden entries and ``exclude``."""
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and (exclude is None or (here / d).resolve() != exclude)
        )
        for name in sorted(filenames):
            if not name.startswith("."):
                yield here / name


def discover(
    roots: Iterable[Path],
    *,
    exclude: Path | None = None,
    image_patient_regex: str = "",
    probe_map: Callable[[list[Path]], list[DicomHeader | InputError]] | None = None,
) -> Discovery:
    """Find the scans under ``roots``.

    Args:
        roots: files or folders given on the command line.
        exclude: a folder never to descend into (the output folder, if it lies inside an input).
        image_patient_regex: regex whose first group, applied to an image's file name, gives its
            patient (e.g. ``^(\\w+)_``); without it, a folder of images below a class folder is one
            patient, and images directly in a class folder are one patient each.
        probe_map: maps ``probe_file`` over paths, in parallel; serial when None.
    """
    found = Discovery()
    dicom_candidates: list[tuple[Path, Path]] = []
    images: list[tuple[Path, Path]] = []
    niftis: list[tuple[Path, Path]] = []
    for root in roots:
        if not root.exists():
            found.skips.append(Skip(str(root), "folder", "does not exist"))
            continue
        n_before = found.files_seen
        for path in walk_files(root, exclude):
            found.files_seen += 1
            suffix = path.suffix.lower()
            if is_nifti_name(path):
                niftis.append((root, path))
            elif is_image_name(path):
                images.append((root, path))
            elif suffix in SIDE_FILE_SUFFIXES:
                continue
            else:
                dicom_candidates.append((root, path))
        if found.files_seen == n_before:
            found.skips.append(Skip(str(root), "folder", "empty: no files found"))

    _nifti_jobs(niftis, found)
    _group_images(images, image_patient_regex, found)
    _group_dicom(dicom_candidates, probe_map, found)
    return found


def _nifti_jobs(niftis: list[tuple[Path, Path]], found: Discovery) -> None:
    """One job per file. The patient is the file name without extension (MosMedData's
    study_0001.nii.gz), unless several files share that name (patient folders each holding
    scan.nii.gz): then it is the file's folder path below its input."""
    stems: dict[str, int] = defaultdict(int)
    for _, path in niftis:
        stems[nifti_stem(path)] += 1
    for root, path in niftis:
        stem = nifti_stem(path)
        basis = UnitBasis.NIFTI_FOLDER
        if stems[stem] > 1:
            try:
                patient = "/".join(path.parent.relative_to(root).parts) or path.parent.name
            except ValueError:
                patient = path.parent.name
        else:
            patient, basis = stem, UnitBasis.NIFTI_FILE
        found.jobs.append(
            Job(
                kind=JobKind.NIFTI,
                sources=(str(path),),
                patient_key=patient,
                series_key=str(path),
                folder_label=folder_label(path, root),
                unit_basis=basis,
            )
        )


def _group_images(images: list[tuple[Path, Path]], regex: str, found: Discovery) -> None:
    pattern = re.compile(regex) if regex else None
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    labels: dict[tuple[str, str], int | None] = {}
    bases: dict[tuple[str, str], UnitBasis] = {}
    singles = 0
    for root, path in images:
        label = folder_label(path, root)
        if pattern is not None:
            m = pattern.search(path.name)
            patient = f"{path.parent}/{m.group(1) if m and m.groups() else path.stem}"
            basis = UnitBasis.IMAGE_PATTERN if m and m.groups() else UnitBasis.SINGLE_IMAGE
        elif class_folder_label(path.parent.name) is not None:
            patient = str(path)  # directly inside a class folder: no grouping information
            basis = UnitBasis.SINGLE_IMAGE
            singles += 1
        else:
            patient, basis = str(path.parent), UnitBasis.IMAGE_FOLDER
        key = (str(root), patient)
        groups[key].append(path)
        labels[key] = label
        bases[key] = basis
    if singles:
        found.skips.append(
            Skip(
                "(slice images)",
                "folder",
                f"{singles} images lie directly in class folders with no patient grouping: each "
                "is treated as its own patient, so the split cannot keep one patient's slices "
                "together; use one folder per patient or --image-patient-regex",
            )
        )
    for (root_str, patient), paths in sorted(groups.items()):
        found.jobs.append(
            Job(
                kind=JobKind.IMAGES,
                sources=tuple(str(p) for p in sorted(paths, key=_natural_key)),
                patient_key=patient,
                series_key=patient,
                folder_label=labels[(root_str, patient)],
                unit_basis=bases[(root_str, patient)],
            )
        )


def _natural_key(path: Path) -> list[object]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _group_dicom(
    candidates: list[tuple[Path, Path]],
    probe_map: Callable[[list[Path]], list[DicomHeader | InputError]] | None,
    found: Discovery,
) -> None:
    paths = [p for _, p in candidates]
    root_of = {str(p): r for r, p in candidates}
    results = probe_map(paths) if probe_map is not None else probe_many(paths)
    headers_ok: list[DicomHeader] = []
    for path, res in zip(paths, results, strict=True):
        if isinstance(res, InputError):
            found.skips.append(Skip(str(path), "file", str(res)))
        else:
            headers_ok.append(res)
    choices, rejected = select_series(headers_ok)
    for group, why in rejected:
        n = len(group)
        found.skips.append(
            Skip(_series_dir(group), "series", f"{why} ({n} file{'s' if n != 1 else ''})")
        )
    for choice in choices:
        for group, why in choice.not_chosen():
            found.skips.append(Skip(_series_dir(group), "series", why))
        study, chosen = choice.study, choice.chosen
        headers = sorted(choice.headers, key=lambda h: h.path)
        first = headers[0]
        found.jobs.append(
            Job(
                kind=JobKind.DICOM,
                sources=tuple(h.path for h in headers),
                patient_key=first.patient_id,
                study_key=study,
                series_key=chosen,
                folder_label=folder_label(Path(first.path), root_of[first.path]),
                headers=tuple(headers),
                # no PatientID: the reader makes the study its own patient
                unit_basis=(
                    UnitBasis.DICOM_PATIENT_ID if first.patient_id else UnitBasis.DICOM_STUDY
                ),
            )
        )


def _series_dir(headers: list[DicomHeader]) -> str:
    dirs = {str(Path(h.path).parent) for h in headers}
    return dirs.pop() if len(dirs) == 1 else f"{headers[0].path} (+{len(headers) - 1} files)"


def _probe_or_error(path: Path) -> DicomHeader | InputError:
    try:
        return probe_file(path)
    except InputError as exc:
        return exc
    except OSError as exc:
        return InputError(f"cannot read file ({exc.strerror or exc})")


def probe_many(paths: list[Path]) -> list[DicomHeader | InputError]:
    """``probe_file`` over a chunk of paths (a picklable unit of parallel work)."""
    return [_probe_or_error(p) for p in paths]
