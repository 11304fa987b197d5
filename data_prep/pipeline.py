"""``prepare()``: raw scans in, a de-identified, patient-split slice dataset out.

The folder it writes is described, and named, in ``data_prep.prepared.PrepFolder``.
Every job's slices and record are written atomically when it finishes, so an interrupted run
keeps all finished volumes and the next run only does what is missing.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from data_prep.assemble import PrepareResult, Problem, assemble
from data_prep.atomic import atomic_write_json
from data_prep.deid import Pseudonymizer, load_or_create_key
from data_prep.discover import Job, Skip, discover, probe_many
from data_prep.errors import CovidCTError, InputError
from data_prep.isolation import run_isolated
from data_prep.labels import read_label_csv
from data_prep.prepared import PrepFolder
from data_prep.readers.dicom import DicomHeader
from data_prep.records import PrivateJobRecord
from data_prep.settings import PrepConfig, SliceSettings
from data_prep.worker import Outcome, process_job

logger = logging.getLogger(__name__)

PROBE_CHUNK = 128
_DEFAULT = PrepConfig()  # frozen: one shared default


class PrepFolderError(CovidCTError):
    """The output folder cannot be used as it is."""


def prepare(
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    config: PrepConfig = _DEFAULT,
    labels: Sequence[Path] = (),
    progress: bool = False,
    on_job_done: Callable[[int, int], None] | None = None,
) -> PrepareResult:
    """Prepare scans under ``inputs`` into ``out_dir`` (created, or resumed if it exists).

    Args:
        inputs: DICOM trees, NIfTI files or folders, slice-image folders.
        out_dir: the PREP folder.
        config: options.
        labels: CSV files with a ``label`` column and patient_id / study_uid / path.
        progress: show progress bars (tqdm, on stderr).
        on_job_done: called with (finished, total) after each job's record is saved.

    Raises:
        PrepFolderError: ``out_dir`` was prepared with different slice settings.
        LabelError: a label file is unreadable or lacks the required columns.
    """
    out_dir = out_dir.resolve()
    _check_settings(out_dir, config.slices)
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = PrepFolder(out_dir)
    (folder.state_dir / folder.JOBS).mkdir(parents=True, exist_ok=True)
    (folder.private_dir / folder.JOBS).mkdir(parents=True, exist_ok=True)
    ps = Pseudonymizer(load_or_create_key(folder.private_dir))
    tables = [read_label_csv(p) for p in labels]  # fail fast, before any work

    workers = config.workers or os.cpu_count() or 1
    ctx = None
    executor: Executor | None = None
    if workers > 1:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["data_prep.worker", "data_prep.discover"])
        executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=quiet_decoders
        )
    try:
        found = discover(
            [Path(p) for p in inputs],
            exclude=out_dir,
            image_patient_regex=config.image_patient_regex,
            probe_map=_parallel_probe(executor, progress) if executor else None,
        )
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    reused, processed = _run_jobs(
        found.jobs, out_dir, config, ps, ctx, workers, progress, on_job_done
    )
    return assemble(out_dir, config, ps, found, tables, reused, processed)


def quiet_decoders() -> None:
    """Silence pydicom's own logging of decode failures (tracebacks at ERROR level).

    Every failure it logs is also raised, caught and reported by covidct as a one-line reason;
    letting pydicom print it as well would put tracebacks on the user's console.
    """
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("ignore", module=r"nibabel(\.|$)")


def _check_settings(out_dir: Path, settings: SliceSettings) -> None:
    meta = PrepFolder(out_dir).dataset_file
    if not meta.exists():
        return
    try:
        old = json.loads(meta.read_text())["slices"]
    except (OSError, ValueError, KeyError) as exc:
        raise PrepFolderError(f"{meta} is unreadable ({exc}); use a new --out folder") from exc
    if isinstance(old, dict):
        try:  # settings added later take what older folders were made with
            old = SliceSettings.from_recorded(old).as_dict()
        except (TypeError, ValueError) as exc:
            raise PrepFolderError(
                f"{meta} has unknown slice settings ({exc}); use a new --out folder"
            ) from exc
    if old != settings.as_dict():
        raise PrepFolderError(
            f"{out_dir} was prepared with slice settings {old}, not {settings.as_dict()}: "
            "use a new --out folder (slices of different settings cannot be mixed)"
        )


def _parallel_probe(
    executor: Executor, progress: bool
) -> Callable[[list[Path]], list[DicomHeader | InputError]]:
    def probe(paths: list[Path]) -> list[DicomHeader | InputError]:
        chunks = [paths[i : i + PROBE_CHUNK] for i in range(0, len(paths), PROBE_CHUNK)]
        out: list[DicomHeader | InputError] = []
        for res in _progress(
            executor.map(probe_many, chunks), len(chunks), "reading headers", progress
        ):
            out.extend(res)
        return out

    return probe


def _progress(it: Any, total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over ``it`` (or, with ``it`` None, a bar to update by hand; None if off)."""
    if not enabled:
        return it
    from tqdm import tqdm

    by_hand = {"unit": "scan"} if it is None else {}
    return tqdm(it, total=total, desc=desc, **by_hand)


def job_key(job: Job, ps: Pseudonymizer) -> str:
    """Keyed digest of a job's inputs (paths, sizes, modification times): changes when they do."""
    parts = [job.kind]
    for src in job.sources:
        try:
            st = os.stat(src)
            parts.append(f"{src}|{st.st_size}|{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{src}|missing")
    return ps.digest("job", "\n".join(parts), length=24)


def _run_jobs(
    jobs: list[Job],
    out_dir: Path,
    config: PrepConfig,
    ps: Pseudonymizer,
    ctx: Any,
    workers: int,
    progress: bool,
    on_job_done: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    keys = [job_key(j, ps) for j in jobs]
    todo = [
        (j, k) for j, k in zip(jobs, keys, strict=True) if not _record_path(out_dir, k).exists()
    ]
    reused = len(jobs) - len(todo)
    _add_missing_unit_basis(out_dir, jobs, keys)
    total = len(todo)
    done = 0
    bar = _progress(None, total, "preparing scans", progress)

    def finish() -> None:
        nonlocal done
        done += 1
        if bar is not None:
            bar.update(1)
        if on_job_done is not None:
            on_job_done(done, total)

    kwargs = {"settings": config.slices, "out_dir": out_dir, "pseudonymizer": ps}
    try:
        if ctx is None:  # one process (workers=1): nothing isolates a crash of a decoder
            for job, key in todo:
                _process_and_save(job, key, **kwargs)  # type: ignore[arg-type]
                finish()
        else:
            run_isolated(
                todo,
                _process_and_save,
                kwargs,
                ctx=ctx,
                workers=workers,
                timeout=config.job_timeout_s,
                is_done=lambda key: _record_path(out_dir, key).exists(),
                give_up=lambda job, key, why: _save_record(out_dir, job, key, Outcome.skipped(why)),
                finish=finish,
                initializer=quiet_decoders,
            )
    finally:
        if bar is not None:
            bar.close()
    return reused, total


def _process_and_save(
    job: Job, key: str, *, settings: SliceSettings, out_dir: Path, pseudonymizer: Pseudonymizer
) -> None:
    outcome = process_job(job, settings=settings, out_dir=out_dir, pseudonymizer=pseudonymizer)
    _save_record(out_dir, job, key, outcome)


def _add_missing_unit_basis(out_dir: Path, jobs: list[Job], keys: list[str]) -> None:
    """Records from an older covidct lack ``unit_basis``: discovery knows it, so add it."""
    for job, key in zip(jobs, keys, strict=True):
        path = _record_path(out_dir, key)
        if not path.exists():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # assemble reports an unreadable record
        if isinstance(record, dict) and "unit_basis" not in record:
            record["unit_basis"] = job.unit_basis.value
            atomic_write_json(path, record)


def _record_path(out_dir: Path, key: str) -> Path:
    return PrepFolder(out_dir).job_record(key)


def _save_record(out_dir: Path, job: Job, key: str, outcome: Outcome) -> None:
    # private side first: a public record always has its private mapping
    private = PrivateJobRecord(
        kind=job.kind,
        sources=job.sources,
        patient_key=outcome.patient_key or job.patient_key,
        study_key=job.study_key,
    )
    atomic_write_json(PrepFolder(out_dir).private_job_record(key), private.to_json())
    record = outcome.record.saved_as(job=key, input_ref=ps_ref(key))
    atomic_write_json(_record_path(out_dir, key), record.to_json())


def ps_ref(job_key: str) -> str:
    """Report reference of a job's input (its key is already a keyed digest)."""
    return "in-" + job_key[:12]


__all__ = ["PrepConfig", "PrepFolderError", "PrepareResult", "Problem", "Skip", "prepare"]
