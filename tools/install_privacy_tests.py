"""Install tensorflow-privacy's ``privacy_tests`` package into this environment.

tensorflow-privacy 0.9.0 (the version that runs on TensorFlow >= 2.16) ships without its
``privacy_tests`` package: its ``privacy/membership_inference_attack`` module is a shim that
imports the missing package. The membership-inference attacks of 0.8.12, the last release that
includes them, are taken from that release's official wheel (pinned by SHA-256) and placed under
the installed ``tensorflow_privacy/privacy/``. Only that package is installed, without its tests;
nothing else of 0.8.12 is used. Run by ``make`` after ``pip install``; idempotent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "tensorflow_privacy-0.8.12-py3-none-any.whl"
SHA256 = "d9feae96db6f3cec59c769460fbf71a493f4c6e546e8688f86b4e2f833b7613e"
PREFIX = "tensorflow_privacy/privacy/privacy_tests/"


def main() -> int:
    spec = importlib.util.find_spec("tensorflow_privacy")
    if spec is None or not spec.submodule_search_locations:
        print("tensorflow_privacy is not installed: run pip install first", file=sys.stderr)
        return 1
    package = Path(next(iter(spec.submodule_search_locations)))
    target = package / "privacy" / "privacy_tests"
    marker = target / "INSTALLED_FROM"
    if marker.is_file() and SHA256 in marker.read_text():
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--dest", tmp]
        subprocess.run([*pip, "tensorflow-privacy==0.8.12", "--only-binary", ":all:"], check=True)
        wheel = Path(tmp) / WHEEL
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != SHA256:
            print(f"{WHEEL}: sha256 {digest}, expected {SHA256}; not installed", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheel) as zf:
            names = [
                n
                for n in zf.namelist()
                if n.startswith(PREFIX) and n.endswith(".py") and not n.endswith("_test.py")
            ]
            for name in names:
                dest = package.parent / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(zf.read(name))
    marker.write_text(f"{WHEEL} sha256={SHA256}\n")
    print(f"installed privacy_tests ({len(names)} modules) from {WHEEL} into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
