"""The dashboard in a real browser: Debian's chromium driven by Playwright.

The server is started as a plain child process (its PID is the server's), polled on
/_stcore/health, and killed at the end whatever happens. Screenshots go to the test's temp dir.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.conftest import dicom_zip, nifti_upload

pytestmark = pytest.mark.browser
APP = Path(__file__).resolve().parents[2] / "app" / "dashboard.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(runs: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "COVIDCT_RUNS": str(runs)}
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true"]
    cmd += ["--server.address", "127.0.0.1", "--server.port", str(port)]
    cmd += ["--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start (exit code {proc.poll()})")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.poll() is not None  # no server left running


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: `make unit` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _open(browser: object, url: str, page_name: str):  # -> playwright Page
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    page.goto(url)
    page.get_by_text(page_name, exact=True).first.click()
    expect(page.get_by_role("heading", name=page_name)).to_be_visible(timeout=60_000)
    return page


def _upload_and_wait(page, files: list[dict[str, object]], shot: Path) -> None:
    from playwright.sync_api import expect

    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(files)
    expect(page.get_by_text("Scan-level probability")).to_be_visible(timeout=90_000)
    heat = page.get_by_text("raised the COVID-19 score", exact=False).first
    expect(heat).to_be_visible(timeout=60_000)
    images = page.locator('[data-testid="stImage"] img')
    expect(images).to_have_count(2, timeout=60_000)  # the slice and its heat map
    for i in range(2):
        images.nth(i).scroll_into_view_if_needed()
        expect(images.nth(i)).to_be_visible(timeout=30_000)
    page.screenshot(path=str(shot), full_page=True)


def test_upload_a_zipped_dicom_series_and_a_nifti_in_the_browser(server, browser, cohort, tmp_path):
    page = _open(browser, server, "Predict")
    zipped = {"name": "series.zip", "mimeType": "application/zip", "buffer": dicom_zip(cohort)}
    _upload_and_wait(page, [zipped], tmp_path / "predict_dicom_zip.png")
    page.close()

    page = _open(browser, server, "Predict")  # a new session: a new scan
    name, data = nifti_upload(cohort)
    nifti = {"name": name, "mimeType": "application/gzip", "buffer": data}
    _upload_and_wait(page, [nifti], tmp_path / "predict_nifti.png")
    page.close()
    assert (tmp_path / "predict_dicom_zip.png").stat().st_size > 10_000
    assert (tmp_path / "predict_nifti.png").stat().st_size > 10_000


def test_curves_page_renders_in_the_browser(server, browser, tmp_path):
    from playwright.sync_api import expect

    page = _open(browser, server, "Privacy/utility")
    expect(page.get_by_text("Utility vs epsilon")).to_be_visible(timeout=60_000)
    expect(page.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible(timeout=60_000)
    page.screenshot(path=str(tmp_path / "curves.png"), full_page=True)
    page.close()
    assert (tmp_path / "curves.png").stat().st_size > 10_000
