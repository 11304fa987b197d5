"""The privacy budget ledger of a cohort of patients, however often it is prepared.

Where: ``$COVIDCT_HOME/ledgers/<cohort>.json`` (default ``~/.covidct``; point COVIDCT_HOME at a
shared folder for a department). A prepared folder is mapped to its SOURCE cohort: the keyed
hashes (HMAC-SHA256 under the site key ``$COVIDCT_HOME/site.key``) of the source patient keys
that prepare kept in ``PREP/private/pseudonym_map.csv`` (the DICOM PatientID, or the fallback
that stood for the patient). So re-preparing the same scans into a new folder, or copying a
folder without its ledger, opens no fresh budget: both folders map to the same ledger. A
cohort that shares even one patient with another counts the other's runs too (the patient in
both has spent both). A folder without that map (not prepared by covidct) is its own cohort.

Every training on the dataset is recorded when it starts (with the steps it plans, so a run that
crashes is still counted in full: its noisy updates may have been observed) and updated with the
steps it actually took when it finishes. The total spend composes the runs' DP events with the
accountant (one RDP or PLD accountant over all of them, not a sum of epsilons). A non-private run,
and a slice-level run (its guarantee is per slice, not per patient), make the patient-level
spend unbounded, and say so.

A dataset may carry a budget (``covidct budget PREP --set 10``): a training whose planned spend
would take the total over it is refused before it starts, with the remaining budget in the message.
Reads and writes happen under an exclusive file lock and every write is atomic, so concurrent
trainings cannot lose an entry. The ledger holds no identifier.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import hmac
import json
import math
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from covidct.privacy import accounting
from covidct.privacy.accounting import Accountant
from covidct.runs import number_out, read_number
from data_prep.atomic import atomic_write_json
from data_prep.errors import CovidCTError
from data_prep.prepared import PrepFolder

__all__ = [
    "BudgetExceededError",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "begin_run",
    "finish_run",
    "read_ledger",
    "resume_run",
    "set_budget",
    "total_spent",
]

FORMAT = "covidct-ledger-2"
HOME_ENV = "COVIDCT_HOME"


class BudgetExceededError(CovidCTError):
    """The planned training would take the dataset over its privacy budget."""


class LedgerError(CovidCTError):
    """The ledger file is unreadable or malformed."""


@dataclass(frozen=True)
class LedgerEntry:
    """One training on the dataset.

    Attributes:
        run_id: the run folder's name.
        run_dir: where the run was written.
        started: ISO time the run started (UTC).
        status: "started" (running, or crashed: counted with its planned steps) or "finished".
        dp: False for a non-private run (unbounded spend).
        privacy_unit: "patient" or "slice".
        noise_multiplier: sigma.
        sampling_rate: q.
        steps: planned steps while running, steps taken once finished.
        delta: the run's own delta.
        epsilon: the run's own epsilon at its delta (``inf`` when not private).
    """

    run_id: str
    run_dir: str
    started: str
    status: str
    dp: bool
    privacy_unit: str
    noise_multiplier: float
    sampling_rate: float
    steps: int
    delta: float
    epsilon: float

    @property
    def bounded(self) -> bool:
        """Whether this run's spend is bounded at the patient level."""
        return self.dp and self.privacy_unit == "patient"


@dataclass
class Ledger:
    """One cohort's ledger.

    Attributes:
        budget_epsilon: the cohort's budget (None: none set).
        budget_delta: the delta of the budget.
        entries: the runs on this cohort (any preparation of it).
        others: runs on OTHER cohorts that share patients with this one (read only): they
            count in this cohort's total.
        cohort: the cohort's fingerprint (a keyed hash; no identifier).
        path: where the ledger is kept.
    """

    budget_epsilon: float | None = None
    budget_delta: float | None = None
    entries: list[LedgerEntry] = field(default_factory=list)
    others: list[LedgerEntry] = field(default_factory=list)
    cohort: str = ""
    path: Path | None = None

    @property
    def counted(self) -> list[LedgerEntry]:
        """Every run that spent budget of this cohort's patients."""
        return [*self.entries, *self.others]


@dataclass(frozen=True)
class Cohort:
    """The source patients of a prepared folder, as keyed hashes under the site key."""

    fingerprint: str
    members: frozenset[str]


def ledger_home() -> Path:
    """``$COVIDCT_HOME`` or ``~/.covidct``: the site's ledgers and key."""
    raw = os.environ.get(HOME_ENV, "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".covidct"


def _site_key(home: Path) -> bytes:
    """The site's key for cohort hashes (owner-only, created on first use)."""
    path = home / "site.key"
    if path.is_file():
        key = bytes.fromhex(path.read_text().strip())
        if len(key) < 16:
            raise LedgerError(f"{path} is too short: restore it from a backup")
        return key
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    key = secrets.token_bytes(32)
    from data_prep.atomic import atomic_write_bytes

    atomic_write_bytes(path, key.hex().encode(), mode=0o600)
    return key


def _source_patients(prep: Path) -> list[str] | None:
    """The source patient keys prepare kept in ``private/`` (None: not a covidct PREP)."""
    path = PrepFolder(prep).pseudonym_map
    if not path.is_file():
        return None
    try:
        with path.open(newline="") as fh:
            keys = {row["source_patient_id"] for row in csv.DictReader(fh)}
    except (OSError, KeyError, csv.Error) as err:
        raise LedgerError(
            f"{path} is unreadable ({err}): the ledger cannot tell which patients this folder "
            "holds. Fix: re-run covidct prepare on the same inputs into this folder."
        ) from err
    return sorted(k for k in keys if k)


def cohort_of(prep: Path) -> Cohort:
    """The cohort of a prepared folder: keyed hashes of its source patients."""
    key = _site_key(ledger_home())
    sources = _source_patients(prep)
    if not sources:  # no patient map: the folder stands for itself
        sources = ["folder:" + str(prep.resolve())]
    members = frozenset(
        hmac.new(key, b"patient\x00" + s.encode(), hashlib.sha256).hexdigest()[:32] for s in sources
    )
    digest = hmac.new(key, b"cohort\x00" + "\n".join(sorted(members)).encode(), hashlib.sha256)
    return Cohort(fingerprint="C-" + digest.hexdigest()[:24], members=members)


def _ledgers_dir() -> Path:
    return ledger_home() / "ledgers"


def _path(cohort: Cohort) -> Path:
    return _ledgers_dir() / f"{cohort.fingerprint}.json"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """An exclusive lock over the site's ledgers, held across read-modify-write (also between
    processes; one lock for all cohorts, since a total reads the overlapping ones)."""
    folder = _ledgers_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _f(x: Any) -> float:
    value = read_number(x)
    if value is None:
        raise ValueError(f"epsilon {x!r} is not a number")
    return value


def _parse(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        data["entries"] = [
            LedgerEntry(**{**e, "epsilon": _f(e["epsilon"])}) for e in data.get("entries", [])
        ]
        data["members"] = frozenset(data.get("members", []))
        return dict(data)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise LedgerError(
            f"{path} is unreadable ({err}). Fix: restore it from a backup; never delete it to "
            "get around a budget."
        ) from err


def read_ledger(prep: Path) -> Ledger:
    """The ledger of the cohort ``prep`` was prepared from (empty when none was written yet),
    with the runs of every cohort that shares a patient with it."""
    cohort = cohort_of(prep)
    path = _path(cohort)
    own = _parse(path) if path.is_file() else {"entries": []}
    entries: list[LedgerEntry] = list(own["entries"])
    # a folder's ledger from before cohorts: its runs count here
    legacy = PrepFolder(prep).legacy_ledger
    if legacy.is_file():
        known = {(e.run_id, e.started) for e in entries}
        entries += [e for e in _parse(legacy)["entries"] if (e.run_id, e.started) not in known]
    others: list[LedgerEntry] = []
    folder = _ledgers_dir()
    if folder.is_dir():
        for other in sorted(folder.glob("C-*.json")):
            if other == path:
                continue
            data = _parse(other)
            if data["members"] & cohort.members:
                others += data["entries"]
    budget = own.get("budget") or {}
    return Ledger(
        budget_epsilon=None if budget.get("epsilon") is None else float(budget["epsilon"]),
        budget_delta=None if budget.get("delta") is None else float(budget["delta"]),
        entries=entries,
        others=others,
        cohort=cohort.fingerprint,
        path=path,
    )


def _write(prep: Path, ledger: Ledger) -> None:
    cohort = cohort_of(prep)
    atomic_write_json(
        _path(cohort),
        {
            "format": FORMAT,
            "cohort": cohort.fingerprint,
            # keyed hashes of the source patients: to find cohorts that share patients
            "members": sorted(cohort.members),
            "budget": {"epsilon": ledger.budget_epsilon, "delta": ledger.budget_delta},
            "entries": [{**asdict(e), "epsilon": number_out(e.epsilon)} for e in ledger.entries],
        },
    )


def total_spent(
    entries: list[LedgerEntry], *, delta: float, accountant: Accountant = Accountant.RDP
) -> float:
    """Patient-level epsilon at ``delta`` of all the runs together (composed, not summed)."""
    if any(not e.bounded for e in entries):
        return math.inf
    runs = [(e.noise_multiplier, e.sampling_rate, e.steps) for e in entries if e.steps > 0]
    return accounting.compose_runs(runs, delta=delta, accountant=accountant)


def _budget_delta(ledger: Ledger, fallback: float) -> float:
    return ledger.budget_delta if ledger.budget_delta is not None else fallback


def set_budget(prep: Path, *, epsilon: float, delta: float) -> Ledger:
    """Set (or change) the dataset's total budget."""
    if not epsilon > 0:
        raise BudgetExceededError(f"a budget must be > 0, got {epsilon}")
    with _locked():
        ledger = read_ledger(prep)
        ledger.budget_epsilon, ledger.budget_delta = float(epsilon), float(delta)
        _write(prep, ledger)
    return ledger


def begin_run(prep: Path, entry: LedgerEntry) -> float:
    """Record a run about to start, or refuse it when it would exceed the budget.

    Args:
        prep: the prepared dataset.
        entry: the run, with its PLANNED steps.

    Returns:
        The total spend including this run, at the budget's delta (or the run's when no budget).

    Raises:
        BudgetExceededError: a budget is set and the total with this run would exceed it.
    """
    with _locked():
        ledger = read_ledger(prep)
        after = _check_budget(prep, ledger, others=ledger.counted, entry=entry)
        ledger.entries.append(entry)
        _write(prep, ledger)
        return after


def resume_run(prep: Path, run_id: str, *, steps: int, epsilon: float) -> float:
    """Raise a resumed run's recorded steps to the most it may now count (repeated steps too).

    Args:
        prep: the prepared dataset.
        run_id: the run being resumed (its latest "started" entry is updated).
        steps: the steps it will have counted when it finishes (steps before the crash, repeated
            ones included, plus those still to take).
        epsilon: the run's own epsilon for those steps.

    Returns:
        The total spend including the resumed run.

    Raises:
        BudgetExceededError: the larger count would take the dataset over its budget.
        LedgerError: the ledger has no unfinished entry for the run.
    """
    with _locked():
        ledger = read_ledger(prep)
        i = _latest_started(ledger, run_id)
        if i is None:
            done = [e for e in ledger.entries if e.run_id == run_id and e.status == "finished"]
            if done and done[-1].steps >= steps:  # died after recording its end: nothing new
                return total_spent(ledger.counted, delta=_budget_delta(ledger, done[-1].delta))
            raise LedgerError(
                f"the privacy ledger of {prep} has no unfinished entry for run {run_id}: "
                "it finished already, or it trained on another dataset"
            )
        old = ledger.entries[i]
        entry = replace(old, steps=max(old.steps, steps), epsilon=max(old.epsilon, epsilon))
        others = ledger.entries[:i] + ledger.entries[i + 1 :] + ledger.others
        after = _check_budget(prep, ledger, others=others, entry=entry)
        ledger.entries[i] = entry
        _write(prep, ledger)
        return after


def _latest_started(ledger: Ledger, run_id: str) -> int | None:
    for i in range(len(ledger.entries) - 1, -1, -1):
        e = ledger.entries[i]
        if e.run_id == run_id and e.status == "started":
            return i
    return None


def _check_budget(
    prep: Path, ledger: Ledger, *, others: list[LedgerEntry], entry: LedgerEntry
) -> float:
    """The total with ``entry`` added to ``others``; raises when it exceeds the budget."""
    delta = _budget_delta(ledger, entry.delta)
    before = total_spent(others, delta=delta)
    after = total_spent([*others, entry], delta=delta)
    if ledger.budget_epsilon is not None and after > ledger.budget_epsilon:
        left = max(0.0, ledger.budget_epsilon - before)
        what = (
            "a non-private run has no bound"
            if not entry.dp
            else "a slice-level run does not bound a patient's spend"
            if entry.privacy_unit != "patient"
            else f"this run would bring the total to epsilon {after:.3g}"
        )
        raise BudgetExceededError(
            f"refused: the privacy budget of {prep} is epsilon {ledger.budget_epsilon:g} at "
            f"delta {delta:.3g}; {len(others)} earlier run(s) spent "
            f"{_fmt(before)}, leaving {left:.3g}; {what}. Ask for a smaller epsilon, or see "
            f"`covidct budget {prep}`."
        )
    return after


def finish_run(prep: Path, run_id: str, *, steps: int, epsilon: float) -> None:
    """Replace a started run's planned steps by the steps it counted."""
    with _locked():
        ledger = read_ledger(prep)
        # the latest start of this run: an earlier attempt that crashed keeps its full count
        i = _latest_started(ledger, run_id)
        if i is not None:
            e = ledger.entries[i]
            ledger.entries[i] = replace(e, status="finished", steps=steps, epsilon=epsilon)
        _write(prep, ledger)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fmt(x: float) -> str:
    return "unbounded (inf)" if math.isinf(x) else f"epsilon {x:.3g}"


def summary(prep: Path, *, default_delta: float) -> str:
    """The ledger as a readable table, with the composed total and what is left."""
    ledger = read_ledger(prep)
    delta = _budget_delta(ledger, default_delta)
    lines = [
        f"privacy ledger of {prep}: source cohort {ledger.cohort} (kept in {ledger.path}; "
        "every preparation of these patients shares it)",
        "budget: "
        + (
            f"epsilon {ledger.budget_epsilon:g} at delta {delta:.3g}"
            if ledger.budget_epsilon is not None
            else "none set (covidct budget PREP --set EPSILON)"
        ),
        "",
        f"{'run':<34} {'status':<9} {'unit':<8} {'sigma':>7} {'q':>8} {'steps':>6} {'epsilon':>9}",
    ]
    shared = {id(e) for e in ledger.others}
    for e in ledger.counted:
        eps = "inf" if math.isinf(e.epsilon) else f"{e.epsilon:.3g}"
        flag = (
            "" if e.bounded else "  <- unbounded: " + ("not private" if not e.dp else "slice unit")
        )
        if id(e) in shared:
            flag += "  (a cohort sharing patients with this one)"
        lines.append(
            f"{e.run_id:<34} {e.status:<9} {e.privacy_unit:<8} {e.noise_multiplier:>7.3g} "
            f"{e.sampling_rate:>8.3g} {e.steps:>6} {eps:>9}{flag}"
        )
    total = total_spent(ledger.counted, delta=delta)
    lines += ["", f"total spent (composed with the accountant, delta {delta:.3g}): {_fmt(total)}"]
    if ledger.budget_epsilon is not None:
        left = ledger.budget_epsilon - total
        lines.append(f"remaining: {max(0.0, left):.3g}" if math.isfinite(left) else "remaining: 0")
    return "\n".join(lines)
