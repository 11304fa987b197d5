"""Run directories: ``runs/<run_id>/`` and the files every run writes."""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_write_json, atomic_write_text
from data_prep.errors import CovidCTError


def new_run_id(target_epsilon: float) -> str:
    eps = "inf" if math.isinf(target_epsilon) else f"{target_epsilon:g}"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-eps{eps}-{secrets.token_hex(2)}"


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
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run


def write_json(run: Path, name: str, obj: Any) -> None:
    atomic_write_json(run / name, _json_ready(obj))


def write_yaml(run: Path, name: str, obj: Any) -> None:
    import yaml

    atomic_write_text(run / name, yaml.safe_dump(_json_ready(obj), sort_keys=False))


def read_json(run: Path, name: str) -> Any:
    return json.loads((run / name).read_text())


def _json_ready(obj: Any) -> Any:
    """inf/NaN are not JSON: written as the strings "inf" / null."""
    if isinstance(obj, float):
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    return obj
