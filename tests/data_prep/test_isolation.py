"""No failure of a decoder in a worker takes prepare's run down: exceptions, BaseException
panics, crashes (segfault, abort) and hangs are reported per input, and the rest is prepared."""

from __future__ import annotations

import multiprocessing

from data_prep.isolation import run_isolated
from tests.data_prep import faulty


def test_crashes_hangs_and_panics_are_reported_and_every_other_job_finishes(tmp_path):
    jobs = ["ok1", "segfault", "ok2", "hang", "panic", "ok3", "abort", "ok4", "ok5"]
    todo = [(job, f"k-{job}") for job in jobs]
    gave_up: dict[str, str] = {}
    finished = []
    run_isolated(
        todo,
        faulty.work,
        {"out": tmp_path},
        ctx=multiprocessing.get_context("forkserver"),
        workers=2,
        timeout=3.0,
        is_done=lambda key: (tmp_path / key).exists(),
        give_up=lambda job, key, why: gave_up.__setitem__(job, why),
        finish=lambda: finished.append(1),
    )
    assert len(finished) == len(jobs)  # every job counted once, whatever happened to it
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"k-ok{i}" for i in range(1, 6)]
    assert set(gave_up) == {"segfault", "hang", "panic", "abort"}
    assert "SIGSEGV" in gave_up["segfault"] and "SIGABRT" in gave_up["abort"]
    assert "did not finish within 3 s" in gave_up["hang"]
    assert "Panic" in gave_up["panic"]
