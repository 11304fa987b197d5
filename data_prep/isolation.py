"""Running prepare's jobs so that no failure of a third-party decoder takes the run down.

A job's own errors, including BaseExceptions such as a Rust decoder's panic, become a skipped
record inside the worker (``worker.process_job``). What a worker cannot report, a crash
(segfault, abort, the kernel's OOM killer) or a hang, breaks or stalls the pool: the jobs that
had not finished then run again one at a time, each in a process of its own with a time limit,
so the culprit is found and reported (``give_up``) and every other scan is still prepared.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

__all__ = ["run_isolated"]


def run_isolated(
    todo: Sequence[tuple[Any, str]],
    work: Callable[..., None],
    kwargs: dict[str, Any],
    *,
    ctx: Any,
    workers: int,
    timeout: float,
    is_done: Callable[[str], bool],
    give_up: Callable[[Any, str, str], None],
    finish: Callable[[], None],
    initializer: Callable[[], None] | None = None,
) -> None:
    """Run ``work(job, key, **kwargs)`` for every (job, key) in ``todo`` on ``workers``
    processes of ``ctx``; ``work`` writes its own result, and ``is_done(key)`` says whether it
    did. A job that crashes or runs past ``timeout`` seconds gets ``give_up(job, key, why)``.
    ``finish()`` is called once per job, whatever happened to it; ``initializer`` runs first in
    every worker process."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer)
    futures: dict[Future[None], tuple[Any, str]] = {
        pool.submit(work, job, key, **kwargs): (job, key) for job, key in todo
    }
    waiting = set(futures)
    left: list[tuple[Any, str]] = []
    stalled = False
    try:
        while waiting and not left and not stalled:
            done, waiting = wait(waiting, timeout=timeout, return_when=FIRST_COMPLETED)
            stalled = not done  # nothing finished for `timeout` seconds: a worker hangs
            for fut in done:
                job, key = futures[fut]
                try:
                    fut.result()
                except BrokenProcessPool:  # a worker died: which job killed it is not known
                    left.append((job, key))
                    continue
                except OSError:
                    raise  # the output folder, not the input: stop and say so
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # noqa: BLE001
                    # what process_job could not turn into a record (e.g. an unpicklable panic)
                    give_up(job, key, f"reading it failed in the worker ({type(exc).__name__})")
                finish()
    finally:
        _stop(pool, kill=bool(left) or stalled)
    left += [futures[f] for f in waiting]
    for job, key in left:
        if not is_done(key):
            why = _alone(
                work, job, key, kwargs, ctx=ctx, timeout=timeout, is_done=is_done, init=initializer
            )
            if why is not None:
                give_up(job, key, why)
        finish()


def _stop(pool: ProcessPoolExecutor, *, kill: bool) -> None:
    if kill:  # a hung worker never returns: stop every worker before shutting the pool
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def _run_quietly(
    work: Callable[..., None],
    job: Any,
    key: str,
    kwargs: dict[str, Any],
    report: Any,
    init: Callable[[], None] | None,
) -> None:
    if init is not None:
        init()
    try:
        work(job, key, **kwargs)
    except BaseException as exc:  # noqa: BLE001  (told to the parent in one line, then exit 1)
        report.send(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        raise SystemExit(1) from None


def _alone(
    work: Callable[..., None],
    job: Any,
    key: str,
    kwargs: dict[str, Any],
    *,
    ctx: Any,
    timeout: float,
    is_done: Callable[[str], bool],
    init: Callable[[], None] | None,
) -> str | None:
    """Run one job in a process of its own; None if it finished, else what happened."""
    told, report = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_run_quietly, args=(work, job, key, kwargs, report, init), daemon=True
    )
    proc.start()
    report.close()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return (
            f"reading it did not finish within {timeout:.0f} s (a decoder hung on it); "
            "it was stopped and left out"
        )
    if is_done(key):
        return None
    try:
        said = told.recv() if told.poll() else None
    except EOFError:  # the child closed the pipe without a word (a crash)
        said = None
    if said is not None:
        return f"reading it failed ({said}); it was left out"
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"a decoder crashed on it ({name}); it was left out, the rest of the run went on"
    return f"the process reading it exited with code {code} without a result; it was left out"
