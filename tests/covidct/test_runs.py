"""The run folder's one owner: names, the way numbers are written, refusals, finding runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from covidct.runs import (
    Run,
    RunExistsError,
    RunIdError,
    SweepFolder,
    check_new_run,
    create_run_dir,
    epsilon_tag,
    find_runs,
    new_run_id,
    number_out,
    read_number,
    to_json,
)


def test_infinity_and_nan_are_written_as_json_can_hold_them_and_read_back():
    assert number_out(math.inf) == "inf" and number_out(-math.inf) == "-inf"
    assert number_out(math.nan) is None and number_out(None) is None and number_out(2.5) == 2.5
    nested = {"eps": math.inf, "rows": [(1.0, math.nan)], "n": 3, "name": "x"}
    text = json.dumps(to_json(nested), allow_nan=False)  # strict JSON: no Infinity, no NaN
    back = json.loads(text)
    assert back == {"eps": "inf", "rows": [[1.0, None]], "n": 3, "name": "x"}
    assert read_number(back["eps"]) == math.inf and read_number("-inf") == -math.inf
    assert read_number(None) is None and read_number("") is None and read_number("n/a") is None
    assert read_number(3) == 3.0


def test_every_file_of_a_run_is_written_atomically_and_read_back(tmp_path: Path):
    run = Run(create_run_dir(tmp_path, "r1"))
    assert (run.path / Run.CHECKPOINTS).is_dir() and not run.is_finished
    run.write_json(Run.METRICS, {"auc": 0.9, "epsilon": math.inf})
    run.write_config({"train": {"epochs": 3}})
    assert run.metrics() == {"auc": 0.9, "epsilon": "inf"}
    assert "epochs: 3" in (run.path / Run.CONFIG).read_text()
    assert run.history() == [] and run.read_or(Run.AUDIT, {"none": 1}) == {"none": 1}
    run.write_json(Run.META, {"run_id": "r1"})
    assert run.is_finished and run.meta() == {"run_id": "r1"}
    assert not list(run.path.glob("*.tmp*"))  # nothing half-written left behind


def test_a_run_is_never_overwritten_and_its_id_is_one_folder_name(tmp_path: Path):
    create_run_dir(tmp_path, "r1")
    (tmp_path / "r1" / "note").write_text("x")
    with pytest.raises(RunExistsError, match="never overwritten"):
        check_new_run(tmp_path, "r1")
    for bad in ("../outside", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(RunIdError):
            check_new_run(tmp_path, bad)
    assert not (tmp_path.parent / "outside").exists()


def test_run_ids_name_the_epsilon_and_differ():
    assert epsilon_tag(3.0) == "3" and epsilon_tag(0.5) == "0.5" and epsilon_tag(math.inf) == "inf"
    a, b = new_run_id(3.0), new_run_id(3.0)
    assert "-eps3-" in a and a != b
    assert "-epsinf-" in new_run_id(math.inf)


def test_find_runs_lists_finished_runs_with_a_model_also_inside_sweeps(tmp_path: Path):
    def make(path: Path, *, finished: bool, model: bool) -> None:
        path.mkdir(parents=True)
        if finished:
            (path / Run.META).write_text("{}")
        if model:
            (path / Run.MODEL).write_bytes(b"m")

    make(tmp_path / "a", finished=True, model=True)
    make(tmp_path / "b", finished=False, model=True)  # interrupted
    make(tmp_path / "c", finished=True, model=False)  # model missing
    make(tmp_path / "sweep" / SweepFolder.RUNS / "eps3_b0_s0", finished=True, model=True)
    found = [r.path.relative_to(tmp_path).as_posix() for r in find_runs(tmp_path)]
    assert found == ["a", "sweep/runs/eps3_b0_s0"]
    assert find_runs(tmp_path / "missing") == []
