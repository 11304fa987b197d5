"""Known run secrets, for tests that need two runs to draw the same sample and noise.

Training never does this: it draws a fresh key from the OS (``RunSecret.draw``).
"""

from __future__ import annotations

from covidct.privacy.secret import KEY_BYTES, RunSecret


def known_secret(n: int) -> RunSecret:
    """The test key number ``n`` (a known key voids the guarantee: tests only)."""
    return RunSecret.from_known_key_for_tests(bytes([n % 256]) * KEY_BYTES)
