"""Many clinicians at once: N concurrent dashboard sessions, each uploading a 64-slice scan.

A real server (`covidct dashboard`, one process) and N independent sessions. Each session opens
the Predict page, uploads the same 64-slice 128x128 NIfTI scan and waits for the scan-level
probability. Latency: from the upload to the probability on the page. Printed as JSON per N:
errors, p50/p95/max latency, the CPU seconds the server used in the round, and the server's
resident memory after the round (its sessions closed) and its peak.

Two clients (``--client``):
- ``ws`` (default): each session speaks Streamlit's own websocket protocol, as the page's
  JavaScript does (protobuf ``BackMsg`` / ``ForwardMsg`` on ``/_stcore/stream``: a rerun to open
  the Predict page, ``file_urls_request``, the upload PUT with the XSRF cookie, a rerun with the
  file uploader's state), and reads the probability from the ``metric`` element it receives.
  No browser shares the server's cores, so the figures are the server's.
- ``browser``: one headless chromium (Playwright) with N browser contexts; the browsers take
  most of the 2 cores, so the latency mixes server and client load.

    .venv/bin/python benchmarks/bench_dashboard_load.py [--sessions 1,4,8] [--runs RUNS]
    .venv/bin/python benchmarks/bench_dashboard_load.py --sessions 8,8,8,8   # memory bounded?

Without --runs it trains a small model of the default kind at epsilon 3 on a synthetic cohort
first (default slice settings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of the server: now (VmRSS) and its peak so far (VmHWM)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _default_model() -> str:
    from covidct.train_config import TrainConfig
    from data_prep.settings import SliceSettings

    return f"{TrainConfig().model} at {SliceSettings().image_size} px (the defaults)"


def _make_runs(work: Path) -> Path:
    from covidct.train import train
    from covidct.train_config import TrainConfig
    from data_prep.pipeline import PrepConfig, prepare
    from data_prep.synthetic.cohort import CohortFormat, SynthConfig, write_cohort
    from data_prep.worker import SliceSettings

    write_cohort(
        work / "cohort",
        SynthConfig(n_patients=60, n_slices=8, matrix=128, seed=3, formats=CohortFormat.NIFTI),
    )
    prepare(
        [work / "cohort"],
        work / "prep",
        config=PrepConfig(slices=SliceSettings()),
        labels=[work / "cohort" / "labels.csv"],
    )
    runs = work / "runs"
    train(
        work / "prep",
        config=TrainConfig(epochs=20),
        target_epsilon=3.0,
        runs_dir=runs,
        run_id="eps3",
    )
    return runs


def _scan(work: Path) -> tuple[str, bytes]:
    from data_prep.synthetic.cohort import write_nifti
    from data_prep.synthetic.phantom import make_phantom

    phantom = make_phantom(
        np.random.default_rng(0), n_slices=64, matrix=128, positive=True, burden="mild"
    )
    path = work / "scan.nii.gz"
    write_nifti(phantom, path)
    return path.name, path.read_bytes()


async def _session(browser, url: str, scan: tuple[str, bytes]) -> float:
    from playwright.async_api import expect

    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = await context.new_page()
        await page.goto(url)
        await page.get_by_text("Predict", exact=True).first.click()
        await expect(page.get_by_role("heading", name="Predict")).to_be_visible(timeout=120_000)
        uploader = page.locator('[data-testid="stFileUploader"] input[type="file"]')
        name, data = scan
        t0 = time.perf_counter()
        await uploader.set_input_files(
            [{"name": name, "mimeType": "application/gzip", "buffer": data}]
        )
        await expect(page.get_by_text("Scan-level probability")).to_be_visible(timeout=180_000)
        latency = time.perf_counter() - t0
        if await page.locator('[data-testid="stException"]').count():
            raise RuntimeError("the page shows an exception")
        return latency
    finally:
        await context.close()


def _xsrf_cookie(url: str) -> str:
    """The XSRF cookie the server sets on its health route (uploads must carry it)."""
    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as r:
        for name, value in r.getheaders():
            if name.lower() == "set-cookie" and value.startswith("_streamlit_xsrf="):
                return value.split(";", 1)[0].split("=", 1)[1]
    raise RuntimeError("the server set no XSRF cookie")


class _WsSession:
    """One session over Streamlit's websocket protocol (what the page's JavaScript sends)."""

    def __init__(self, ws: object) -> None:
        self.ws = ws
        self.session_id = ""
        self.widgets: dict[str, object] = {}
        self.elements: list[tuple[str, object]] = []
        self.urls: dict[str, object] = {}

    async def until(self, done) -> None:  # type: ignore[no-untyped-def]
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        while True:
            msg = ForwardMsg()
            msg.ParseFromString(await self.ws.recv())  # type: ignore[attr-defined]
            kind = msg.WhichOneof("type")
            if kind == "new_session":
                self.session_id = msg.new_session.initialize.session_id
            elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                el = msg.delta.new_element
                what = el.WhichOneof("type")
                self.elements.append((what, el))
                if what == "exception":
                    raise RuntimeError(f"the page shows an exception: {el.exception.message}")
                if what in ("radio", "file_uploader"):
                    self.widgets[what] = getattr(el, what)
            elif kind == "file_urls_response":
                self.urls[msg.file_urls_response.response_id] = msg.file_urls_response
            if done(kind):
                return

    async def rerun(self, states: list[object]) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg

        msg = BackMsg()
        msg.rerun_script.SetInParent()
        msg.rerun_script.widget_states.widgets.extend(states)  # type: ignore[arg-type]
        await self.ws.send(msg.SerializeToString())  # type: ignore[attr-defined]


def _put(url: str, path: str, name: str, data: bytes, cookie: str) -> int:
    import http.client
    import urllib.parse
    import uuid

    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
        "\r\nContent-Type: application/gzip\r\n\r\n"
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    where = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    conn.request(
        "PUT",
        path,
        body=body,
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Cookie": f"_streamlit_xsrf={cookie}",
            "X-Xsrftoken": cookie,
        },
    )
    status = conn.getresponse().status
    conn.close()
    return status


async def _ws_session(url: str, scan: tuple[str, bytes]) -> float:
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    cookie = await asyncio.to_thread(_xsrf_cookie, url)
    stream = url.replace("http://", "ws://") + "/_stcore/stream"
    async with websockets.connect(
        stream,
        subprotocols=["streamlit", cookie],
        max_size=None,  # type: ignore[list-item]
    ) as ws:
        s = _WsSession(ws)
        await s.rerun([])
        await s.until(lambda kind: kind == "script_finished")
        page = WidgetState(id=s.widgets["radio"].id, string_value="Predict")  # type: ignore[attr-defined]
        await s.rerun([page])
        await s.until(lambda kind: kind == "script_finished")
        uploader = s.widgets["file_uploader"]
        name, data = scan
        t0 = time.perf_counter()
        request = BackMsg()
        request.file_urls_request.request_id = "scan"
        request.file_urls_request.session_id = s.session_id
        request.file_urls_request.file_names.append(name)
        await ws.send(request.SerializeToString())
        await s.until(lambda kind: "scan" in s.urls)
        urls = s.urls["scan"].file_urls[0]  # type: ignore[attr-defined]
        status = await asyncio.to_thread(_put, url, urls.upload_url, name, data, cookie)
        if status >= 300:
            raise RuntimeError(f"the upload was refused ({status})")
        state = WidgetState(id=uploader.id)  # type: ignore[attr-defined]
        info = state.file_uploader_state_value.uploaded_file_info.add()
        info.name, info.size, info.file_id = name, len(data), urls.file_id
        info.file_urls.CopyFrom(urls)
        s.elements = []

        def shown(kind: str) -> bool:
            return any(
                what == "metric" and el.metric.label == "Scan-level probability"  # type: ignore[attr-defined]
                for what, el in s.elements
            )

        await s.rerun([page, state])
        await s.until(shown)
        return time.perf_counter() - t0


async def _round(url: str, n: int, scan: tuple[str, bytes], client: str) -> dict[str, object]:
    t0 = time.perf_counter()
    if client == "ws":
        results = await asyncio.gather(
            *(_ws_session(url, scan) for _ in range(n)), return_exceptions=True
        )
    else:
        from playwright.async_api import async_playwright

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                results = await asyncio.gather(
                    *(_session(browser, url, scan) for _ in range(n)), return_exceptions=True
                )
            finally:
                await browser.close()
    wall = time.perf_counter() - t0
    ok = [r for r in results if isinstance(r, float)]
    errors = [f"{type(r).__name__}: {str(r)[:120]}" for r in results if not isinstance(r, float)]
    return {
        "sessions": n,
        "errors": len(errors),
        "error_examples": errors[:3],
        "p50_s": round(float(np.percentile(ok, 50)), 2) if ok else None,
        "p95_s": round(float(np.percentile(ok, 95)), 2) if ok else None,
        "max_s": round(max(ok), 2) if ok else None,
        "wall_s": round(wall, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", default="1,4,8", help="a round per value, in this order")
    ap.add_argument("--runs", type=Path, help="a runs folder with a model (default: train one)")
    ap.add_argument("--client", choices=["ws", "browser"], default="ws")
    ap.add_argument(
        "--pause",
        type=float,
        default=2.0,
        help="seconds between rounds; the server frees a closed session's state and uploads "
        "after server.disconnectedSessionTTL (120 s), so > 120 shows what stays",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="covidct-load-") as tmp:
        work = Path(tmp)
        runs = args.runs or _make_runs(work)
        scan = _scan(work)
        port = _free_port()
        cmd = [sys.executable, "-m", "covidct.cli", "dashboard", "--runs", str(runs)]
        server = subprocess.Popen(
            [*cmd, "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.read().strip() == b"ok":
                            break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the dashboard did not start")
                time.sleep(0.5)
            asyncio.run(_round(url, 1, scan, args.client))  # warm-up: the model loads once
            rounds = []
            for n in (int(x) for x in args.sessions.split(",")):
                mb_before = _rss_mb(server.pid)
                cpu0 = _cpu_s(server.pid)
                row = asyncio.run(_round(url, n, scan, args.client))
                # the server's share of the 2 cores (with --client browser, the rest went to
                # the browsers)
                row["server_cpu_s"] = round(_cpu_s(server.pid) - cpu0, 1)
                row["server_mb_before"] = mb_before
                time.sleep(2)
                row["server_mb_after"] = _rss_mb(server.pid)
                time.sleep(max(0.0, args.pause - 2))
                rounds.append(row)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    print(
        json.dumps(
            {
                "scan": "64 slices of 128x128 (NIfTI)",
                "client": args.client,
                "model": _default_model(),
                "cpus": os.cpu_count(),
                "rounds": rounds,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
