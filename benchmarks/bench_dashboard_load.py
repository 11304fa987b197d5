"""Many clinicians at once: N concurrent dashboard sessions, each uploading a 64-slice scan.

A real server (`covidct dashboard`, one process) and one headless browser (Debian's chromium
through Playwright) with N independent sessions (browser contexts). Each session opens the
Predict page, uploads the same 64-slice 128x128 NIfTI scan and waits for the scan-level
probability. Latency: from the upload to the probability on the page. Printed as JSON per N:
errors, p50/p95/max latency, the CPU seconds the server used in the round (the browsers share
the same cores), and the server's resident memory after the round (its sessions closed) and
its peak.

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


async def _round(url: str, n: int, scan: tuple[str, bytes]) -> dict[str, object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *(_session(browser, url, scan) for _ in range(n)), return_exceptions=True
            )
            wall = time.perf_counter() - t0
        finally:
            await browser.close()
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
            asyncio.run(_round(url, 1, scan))  # warm-up: the model is loaded and traced once
            rounds = []
            for n in (int(x) for x in args.sessions.split(",")):
                cpu0 = _cpu_s(server.pid)
                row = asyncio.run(_round(url, n, scan))
                # the server's share of the 2 cores (the rest went to the browsers)
                row["server_cpu_s"] = round(_cpu_s(server.pid) - cpu0, 1)
                time.sleep(2)  # closed sessions are cleaned up
                row["server_mb_after"] = _rss_mb(server.pid)
                rounds.append(row)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    print(
        json.dumps(
            {
                "scan": "64 slices of 128x128 (NIfTI)",
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
