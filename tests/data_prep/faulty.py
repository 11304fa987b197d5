"""Jobs that fail the ways a third-party decoder can (for tests/data_prep/test_isolation.py);
a module of its own so that worker processes can import it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class Panic(BaseException):
    """Like pyo3's PanicException: a BaseException, which ``except Exception`` does not catch."""


def work(job: str, key: str, *, out: Path) -> None:
    if job == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if job == "abort":
        os.abort()
    if job == "hang":
        time.sleep(3600)
    if job == "panic":
        raise Panic("decoder panicked")
    (out / key).write_text("prepared")
