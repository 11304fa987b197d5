"""Stopping `covidct dashboard` by its PID stops the Streamlit server: nothing keeps serving."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _servers_on(port: int) -> list[int]:
    """PIDs of live processes whose command line serves ``port`` (read from /proc)."""
    mark = f"--server.port\0{port}\0".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if mark in (proc / "cmdline").read_bytes():
                state = (proc / "stat").read_text().split(") ", 1)[1][:1]
                if state != "Z":  # a zombie serves nothing
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_covidct_dashboard_by_pid_leaves_no_server(tmp_path, sig):
    port = _free_port()
    cmd = [sys.executable, "-m", "covidct.cli", "dashboard", "--runs", str(tmp_path)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group: the cleanup below can reach anything it left
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/_stcore/health", timeout=2
                ) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"covidct dashboard exited early ({proc.returncode})"
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.5)
        assert _servers_on(port), "no server process found for the port"
        os.kill(proc.pid, sig)  # what `kill PID` or a service manager does
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while (_servers_on(port) or _listening(port)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _servers_on(port) == [], "a server process outlived covidct dashboard"
        assert not _listening(port), "the port is still served"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
