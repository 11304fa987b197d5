"""``covidct ...`` with a KNOWN run secret, for tests that compare two runs (test only).

    python tests/covidct/cli_known_key.py N train --data ... (the arguments of covidct)

Training draws its key from the OS; this replaces that draw by ``known_secret(N)`` in this
process only. The CLI has no way to do this.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from covidct.cli import main as cli_main
    from covidct.privacy.secret import RunSecret
    from tests.covidct.keys import known_secret

    key = known_secret(int(argv[0]))
    RunSecret.draw = classmethod(lambda cls: key)  # type: ignore[method-assign,assignment]
    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main(sys.argv[1:]))
