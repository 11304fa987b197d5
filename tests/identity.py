"""One check, shared by the tests: no identifying header value appears in a text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# a value this long cannot turn up by chance inside a 16-hex-digit pseudonym
_ANYWHERE = 8


def identity_leaks(
    text: str, identities: Iterable[Mapping[str, object]], extra: Iterable[str] = ()
) -> list[str]:
    """The identifying values of ``identities`` (and ``extra`` strings) found in ``text``.

    Values of 8 or more characters (a patient id, a full name, a birth date) are found
    anywhere; shorter values (a 4-digit study id, a time) and the parts of a value longer than
    3 characters (a surname, a street number) only as words of their own: "8920" occurs by
    chance inside random hex pseudonyms ("V-caea4892076...", "P-1dfb0507892...").
    """
    needles: set[str] = set(extra)
    words: set[str] = set()
    for ident in identities:
        for key, value in ident.items():
            if key == "sex" or not value:
                continue
            v = str(value)
            (needles if len(v) >= _ANYWHERE else words).add(v)
            words.update(p for p in v.replace("^", " ").split() if len(p) > 3)
    assert len(needles) > 20 and len(words) > 20, "too few identities to check against"
    found = [n for n in needles if n in text]
    found += [
        w for w in words if re.search(rf"(?<![0-9A-Za-z]){re.escape(w)}(?![0-9A-Za-z])", text)
    ]
    return found
