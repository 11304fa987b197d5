"""Run folders: ``runs/<run_id>/``, the one module that knows their files and formats.

Training writes through ``Run``; the model card, inference, the dashboard, sweeps, public
pretraining and the audit read through it. Numbers are written one way everywhere covidct writes
JSON or CSV (runs, sweeps, checkpoints, the ledger, the privacy report): infinity as the string
"inf", NaN as null (``number_out``); ``read_number`` turns them back into floats.

    run = Run(path)
    run.is_finished, run.meta(), run.metrics(), run.history(), run.load_model()
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_write_json, atomic_write_text
from data_prep.errors import CovidCTError


def epsilon_tag(epsilon: float) -> str:
    """Epsilon as run ids and sweep point names write it: ``3``, ``0.5``, ``inf``."""
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def new_run_id(target_epsilon: float) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-eps{epsilon_tag(target_epsilon)}-{secrets.token_hex(2)}"


class RunExistsError(CovidCTError):
    """The run folder to write already holds a run."""


class RunIdError(CovidCTError):
    """A run id that is not one plain folder name."""


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_new_run(runs_dir: Path, run_id: str) -> Path:
    """The run folder, refused when it already holds files (runs are never overwritten) or when
    ``run_id`` is not one plain folder name (a path would write outside ``runs_dir``)."""
    if not _RUN_ID.fullmatch(run_id):
        raise RunIdError(
            f"run id {run_id!r} is not one folder name: use letters, digits, '.', '_' and '-' "
            "(at most 128, starting with a letter or digit), e.g. --run-id ct-eps3"
        )
    run = runs_dir / run_id
    if run.exists() and any(run.iterdir()):
        raise RunExistsError(
            f"run folder {run} exists and is not empty: choose another --run-id "
            "(finished runs are never overwritten)"
        )
    return run


def create_run_dir(runs_dir: Path, run_id: str) -> Path:
    run = check_new_run(runs_dir, run_id)
    (run / Run.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    return run


def write_json(run: Path, name: str, obj: Any) -> None:
    atomic_write_json(run / name, to_json(obj))


def write_yaml(run: Path, name: str, obj: Any) -> None:
    import yaml

    atomic_write_text(run / name, yaml.safe_dump(to_json(obj), sort_keys=False))


def read_json(run: Path, name: str) -> Any:
    return json.loads((run / name).read_text())


def number_out(x: float | None) -> float | str | None:
    """A number as covidct writes it: inf/NaN are not JSON, so "inf" / "-inf" / null."""
    if x is None or math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def to_json(obj: Any) -> Any:
    """``obj`` with every float written by ``number_out`` (dicts, lists and tuples walked)."""
    if isinstance(obj, float):
        return number_out(obj)
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    return obj


def read_number(value: Any) -> float | None:
    """A number as a run's JSON holds it ("inf" for infinity, null for NaN) -> float or None."""
    if value is None:
        return None
    try:
        return float(value)  # float("inf") reads the string "inf"
    except (TypeError, ValueError):
        return None


class SweepFolder:
    """A sweep folder's file names (``covidct.sweep`` writes it; the CLI, the model card and
    the dashboard read it)."""

    SPEC = "sweep.json"  # the grid asked for
    CURVES = "curves.csv"  # one row per run: the privacy/utility curves
    REPORT = "sweep_report.md"
    RUNS = "runs"  # the sweep's run folders
    FIGURES = ("utility_vs_epsilon.png", "utility_vs_batch_size.png", "epsilon_vs_epoch.png")


class Run:
    """A run folder: its file names, formats and atomic writes, in one place."""

    CONFIG = "config.yaml"  # the resolved configuration the run started with
    META = "run.json"  # written last: its presence marks a finished run
    METRICS = "metrics.json"
    HISTORY = "history.json"
    AUDIT = "audit.json"
    MODEL = "model.keras"
    REPORT_JSON = "privacy_report.json"
    REPORT_MD = "privacy_report.md"
    CHECKPOINTS = "checkpoints"  # crash-safe state (covidct.checkpoint), holding:
    PLAN = "plan.json"  # what the run was asked to do, written before the first step
    PROGRESS = "progress.json"  # every step ever started
    STATE = "state.npz"  # weights, optimizer slots and loop counters

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def is_finished(self) -> bool:
        return (self.path / self.META).is_file()

    @property
    def has_model(self) -> bool:
        return (self.path / self.MODEL).is_file()

    @property
    def model_file(self) -> Path:
        return self.path / self.MODEL

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- reading ----------------------------------------------------------------------

    def read(self, name: str) -> Any:
        """A JSON file of the run (raises OSError / ValueError when missing or unreadable)."""
        return json.loads((self.path / name).read_text())

    def read_or(self, name: str, default: Any) -> Any:
        """A JSON file of the run, or ``default`` when it is missing or unreadable."""
        try:
            return self.read(name)
        except (OSError, ValueError):
            return default

    def meta(self) -> dict[str, Any]:
        return dict(self.read(self.META))

    def metrics(self) -> dict[str, Any]:
        return dict(self.read(self.METRICS))

    def history(self) -> list[dict[str, Any]]:
        return list(self.read_or(self.HISTORY, []))

    def load_model(self) -> Any:
        """The saved Keras model (feature models need the import below: it registers the
        scattering layer)."""
        import covidct.features  # noqa: F401
        from covidct.tfsetup import keras

        return keras.models.load_model(self.model_file, compile=False)

    # ---- writing (each file atomically) ---------------------------------------------------

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.path, name, obj)

    def write_config(self, resolved: dict[str, Any]) -> None:
        write_yaml(self.path, self.CONFIG, resolved)

    def save_model(self, model: Any) -> None:
        tmp = self.path / f"tmp.{self.MODEL}"  # the .keras suffix picks Keras' format
        model.save(str(tmp))
        os.replace(tmp, self.model_file)


def find_runs(root: Path) -> list[Run]:
    """Every finished run with a model under ``root`` (run folders and the runs of sweeps)."""
    if not root.is_dir():
        return []
    found = (Run(p.parent) for p in root.rglob(Run.META))
    return sorted((r for r in found if r.has_model), key=lambda r: r.path)
