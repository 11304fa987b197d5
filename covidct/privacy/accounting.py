"""Privacy accounting for DP-SGD over privacy units: pure functions over dp_accounting.

The mechanism (``covidct.privacy.mechanism``) performs, at every step, a Poisson-subsampled
Gaussian mechanism over N privacy units (patients by default): each unit is included
independently with probability q, its clipped contribution (norm <= C) is summed, and
N(0, sigma^2 C^2) is added once.  Its privacy event is therefore

    SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)

under add-or-remove-one-unit adjacency (Abadi et al. 2016, "Deep Learning with Differential
Privacy"; RDP of the subsampled Gaussian: Mironov 2017 "Renyi Differential Privacy" and Mironov,
Talwar & Zhang 2019; PLD: Koskela et al. 2020, Doroshenko et al. 2022).  Nothing here computes a
bound by hand: every epsilon comes from a dp_accounting accountant.

What the report says about these numbers in words (the sampling assumption, tensorflow-privacy's
statement as a cross-check) lives in ``covidct.privacy.statements``; what a request may ask (the
checks before calibration, the default delta, when noise is still usable, with their advice) in
``covidct.privacy.limits``.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from data_prep.errors import CovidCTError

logger = logging.getLogger(__name__)


# Calibration searches sigma in [_MIN_SIGMA, _MAX_SIGMA]; beyond these the question is moot
# (a sigma below 0.01 is no noise; above 1e4 the update is pure noise).
_MIN_SIGMA = 1e-2
_MAX_SIGMA = 1e4
# Relative precision of the calibrated sigma (well inside the 1e-3 a report prints).
_CALIBRATION_RTOL = 5e-4


class Accountant(enum.Enum):
    """How epsilon is computed from the composed event.

    RDP (Mironov 2017) is the default: fast and the same figure tensorflow-privacy prints, but an
    upper bound that is typically 5-15 % loose; PLD (privacy loss distributions) is numerically
    tight for the same event, and slower.
    """

    RDP = "rdp"
    PLD = "pld"


class Sampling(enum.Enum):
    """How the training loop actually formed its batches.

    Only Poisson sampling matches the accountant's event.  Fixed-size batches from a shuffled
    order have no matching tight bound; covidct still accounts them as Poisson, and the report
    says that the epsilon rests on that assumption (see ``sampling_assumption``).
    """

    POISSON = "poisson"
    SHUFFLED = "shuffled"


class PrivacyRequestError(CovidCTError):
    """The privacy parameters asked for are invalid or cannot give a usable model."""


def _check_event_params(*, noise_multiplier: float, sampling_rate: float, steps: int) -> None:
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise PrivacyRequestError(
            f"noise multiplier: expected a finite number >= 0, found {noise_multiplier}. "
            "Fix: calibrate it with calibrate_noise() or set a positive value."
        )
    if not 0 <= sampling_rate <= 1:
        raise PrivacyRequestError(
            f"sampling rate q: expected 0 <= q <= 1, found {sampling_rate}. "
            "Fix: q = expected batch size / number of units."
        )
    if steps < 0:
        raise PrivacyRequestError(f"steps: expected >= 0, found {steps}. Fix: count steps taken.")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise PrivacyRequestError(
            f"delta: expected 0 < delta < 1 (and well below 1/N), found {delta}. "
            "Fix: use default_delta(N)."
        )


def _make_accountant(accountant: Accountant) -> dp_accounting.PrivacyAccountant:
    # Both default to add-or-remove-one adjacency, which is what the mechanism provides: it
    # divides by the EXPECTED batch size q*N, so adding or removing one unit changes the noisy
    # sum by at most C (Abadi et al. 2016, Alg. 1).
    if accountant is Accountant.RDP:
        return rdp.RdpAccountant()
    return pld.PLDAccountant()


def dp_event(*, noise_multiplier: float, sampling_rate: float, steps: int) -> dp_accounting.DpEvent:
    """The privacy event of ``steps`` DP-SGD steps over Poisson-sampled units.

    Args:
        noise_multiplier: sigma; the noise std divided by the clip norm C.
        sampling_rate: q, the probability that a unit is included in a step.
        steps: number of noisy steps taken (every step ever taken, resumed runs included).

    Returns:
        ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)``, or
        ``NoOpDpEvent`` when no step was taken.

    Raises:
        PrivacyRequestError: a parameter is out of range.
    """
    _check_event_params(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, steps=steps)
    if steps == 0:
        return dp_accounting.NoOpDpEvent()
    step = dp_accounting.PoissonSampledDpEvent(
        sampling_probability=sampling_rate,
        event=dp_accounting.GaussianDpEvent(noise_multiplier=noise_multiplier),
    )
    return dp_accounting.SelfComposedDpEvent(event=step, count=steps)


def compute_epsilon(
    *,
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    accountant: Accountant = Accountant.RDP,
) -> float:
    """Epsilon at ``delta`` after ``steps`` Poisson-sampled Gaussian steps.

    Args:
        noise_multiplier: sigma (0 means no noise: epsilon is infinite once a step is taken).
        sampling_rate: q.
        steps: number of steps; 0 gives epsilon 0.
        delta: target delta.
        accountant: RDP (default) or PLD.

    Returns:
        The epsilon, ``math.inf`` when sigma is 0 and at least one unit may have been used.

    Raises:
        PrivacyRequestError: a parameter is out of range.
    """
    _check_event_params(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, steps=steps)
    _check_delta(delta)
    if steps == 0 or sampling_rate == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    return compose_runs(
        [(noise_multiplier, sampling_rate, steps)], delta=delta, accountant=accountant
    )


@functools.lru_cache(maxsize=1024)
def _rdp_of_one_step(noise_multiplier: float, sampling_rate: float) -> tuple[Any, Any] | None:
    """RDP orders and values of ONE Poisson-subsampled Gaussian step, from dp_accounting.

    RDP composes additively, so ``steps`` steps have ``steps`` times these values: every step
    count for the same (sigma, q) then costs one accountant computation instead of one each
    (the fractional orders take ~0.4 s; resuming, the ledger and per-epoch reports ask often).
    Reads RdpAccountant's arrays (dp_accounting is pinned in constraints.txt); returns None if
    a future version hides them, and callers then compose the plain way. test_accounting checks
    this path against a plain accountant.
    """
    acc = rdp.RdpAccountant()
    acc.compose(dp_event(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, steps=1))
    orders, values = getattr(acc, "_orders", None), getattr(acc, "_rdp", None)
    if orders is None or values is None or len(orders) != len(values):
        return None
    return np.array(orders, dtype=np.float64), np.array(values, dtype=np.float64)


def compose_runs(
    runs: list[tuple[float, float, int]], *, delta: float, accountant: Accountant = Accountant.RDP
) -> float:
    """Epsilon at ``delta`` of several DP-SGD runs composed (e.g. all runs on one dataset).

    Args:
        runs: (noise multiplier sigma, sampling rate q, steps) of each run; sigma > 0.
        delta: target delta.
        accountant: RDP (default) or PLD.
    """
    _check_delta(delta)
    return _epsilons_composed(runs, delta=delta, accountant=accountant, each=False)[-1]


def _epsilons_composed(
    runs: list[tuple[float, float, int]], *, delta: float, accountant: Accountant, each: bool
) -> list[float]:
    """THE place where an epsilon is computed: every other function of this module (one run,
    the per-epoch curve, calibration, the remaining steps) and the ledger come here.

    Returns the epsilon after all ``runs`` composed, or with ``each`` after each prefix of them
    (one accountant composes one run at a time, so a curve costs one pass). Runs without a step
    or with q = 0 spend nothing and are left out (with ``each``, callers pass none such).
    """
    kept = [(float(s), float(q), int(n)) for s, q, n in runs if n > 0 and q > 0]
    if not kept:
        return [0.0] * (len(runs) if each else 1)
    out: list[float] = []
    parts = [_rdp_of_one_step(s, q) for s, q, _ in kept] if accountant is Accountant.RDP else []
    if parts and all(p is not None for p in parts):
        orders, total = parts[0][0], 0.0  # type: ignore[index]
        for (_, _, n), part in zip(kept, parts, strict=True):
            total = total + n * part[1]  # type: ignore[index]
            out.append(float(rdp.compute_epsilon(orders, total, delta)[0]))
    else:
        acc = _make_accountant(accountant)
        for i, (s, q, n) in enumerate(kept):
            acc.compose(dp_event(noise_multiplier=s, sampling_rate=q, steps=n))
            if each or i == len(kept) - 1:
                out.append(float(acc.get_epsilon(delta)))
    return out if each else out[-1:]


def max_steps_within(
    *,
    target_epsilon: float,
    noise_multiplier: float,
    sampling_rate: float,
    delta: float,
    upper: int,
    accountant: Accountant = Accountant.RDP,
) -> int:
    """The most steps (at most ``upper``) whose epsilon stays <= ``target_epsilon``.

    Epsilon grows with the number of steps, so a bisection over [0, upper] finds it with about
    log2(upper) accountant calls. Used when a resumed run has repeated steps: it may take only
    as many more as the target allows.
    """
    if not math.isfinite(target_epsilon):
        return upper

    def fits(steps: int) -> bool:
        return (
            compute_epsilon(
                noise_multiplier=noise_multiplier,
                sampling_rate=sampling_rate,
                steps=steps,
                delta=delta,
                accountant=accountant,
            )
            <= target_epsilon
        )

    if fits(upper):
        return upper
    lo, hi = 0, upper  # fits(lo) holds (0 steps spend nothing), fits(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def epsilon_per_epoch(
    *,
    noise_multiplier: float,
    sampling_rate: float,
    steps_per_epoch: int,
    epochs: int,
    delta: float,
    accountant: Accountant = Accountant.RDP,
) -> list[float]:
    """Cumulative epsilon after each epoch: the i-th value covers (i+1) * steps_per_epoch steps.

    One accountant composes one epoch's event at a time, so the cost is one epoch's accounting
    per entry (RDP is additive over composition; PLD composes distributions).

    Args:
        noise_multiplier: sigma.
        sampling_rate: q.
        steps_per_epoch: steps in one epoch (about 1/q).
        epochs: number of whole epochs.
        delta: target delta.
        accountant: RDP (default) or PLD.

    Returns:
        ``epochs`` non-decreasing values; the last equals ``compute_epsilon`` for all steps.

    Raises:
        PrivacyRequestError: a parameter is out of range.
    """
    if steps_per_epoch < 1 or epochs < 0:
        raise PrivacyRequestError(
            f"expected steps_per_epoch >= 1 and epochs >= 0, found {steps_per_epoch} and "
            f"{epochs}. Fix: pass whole epochs of at least one step."
        )
    _check_event_params(
        noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, steps=steps_per_epoch
    )
    _check_delta(delta)
    if sampling_rate == 0:
        return [0.0] * epochs
    if noise_multiplier == 0:
        return [math.inf] * epochs
    return _epsilons_composed(
        [(noise_multiplier, sampling_rate, steps_per_epoch)] * epochs,
        delta=delta,
        accountant=accountant,
        each=True,
    )


def _bracket(
    eps: Callable[[float], float], *, target_epsilon: float, guess: float, factor: float
) -> tuple[float | None, float]:
    """sigmas (lo, hi), hi <= factor * lo, with eps(lo) > target >= eps(hi).

    epsilon decreases monotonically in sigma.  hi <= factor * lo makes Brent's absolute
    tolerance rtol * lo a relative one.  lo is None when even sigma near _MIN_SIGMA meets the
    target; hi is then the smallest sigma tried, and it was checked.
    """
    if eps(guess) > target_epsilon:
        lo, hi = guess, guess * factor
        while eps(hi) > target_epsilon:
            if hi * factor > _MAX_SIGMA:
                raise PrivacyRequestError(
                    f"target epsilon {target_epsilon} is unreachable with sigma <= "
                    f"{_MAX_SIGMA:g}. Fix: raise epsilon or delta, or train fewer steps."
                )
            lo, hi = hi, hi * factor
        return lo, hi
    lo, hi = guess / factor, guess
    while eps(lo) <= target_epsilon:
        if lo / factor < _MIN_SIGMA:
            return None, lo
        lo, hi = lo / factor, lo
    return lo, hi


@functools.lru_cache(maxsize=256)  # a pure function; sweeps and resumes ask the same question
def calibrate_noise(
    *,
    target_epsilon: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    accountant: Accountant = Accountant.RDP,
) -> float:
    """The smallest sigma (to ~1e-3 relative) whose epsilon at ``delta`` is <= ``target_epsilon``.

    Brackets the root by doubling/halving from sigma = 1 (for PLD: by 10 % steps from the RDP
    answer, since PLD evaluations are ~20x slower), then lets
    ``dp_accounting.calibrate_dp_mechanism`` (Brent's method) close it; that function returns a
    value on the private side of the root, and the result is checked again here.

    Args:
        target_epsilon: the epsilon the whole run may spend.
        sampling_rate: q.
        steps: the number of steps the run will take.
        delta: target delta.
        accountant: RDP (default) or PLD.

    Returns:
        sigma, with ``compute_epsilon(sigma, ...) <= target_epsilon``.

    Raises:
        PrivacyRequestError: invalid parameters, or no sigma up to 1e4 reaches the target.
    """
    _check_calibration_request(target_epsilon, sampling_rate, steps, delta)
    started = time.perf_counter()

    def eps(sigma: float) -> float:
        return compute_epsilon(
            noise_multiplier=sigma,
            sampling_rate=sampling_rate,
            steps=steps,
            delta=delta,
            accountant=accountant,
        )

    if accountant is Accountant.PLD:
        # PLD evaluations are far slower than RDP ones, and RDP over-estimates epsilon, so the
        # RDP sigma is (slightly) above the PLD one: start there, step down by 10 %.
        guess = calibrate_noise(
            target_epsilon=target_epsilon, sampling_rate=sampling_rate, steps=steps, delta=delta
        )
        factor = 1.1
    else:
        guess, factor = 1.0, 2.0
    lo, hi = _bracket(eps, target_epsilon=target_epsilon, guess=guess, factor=factor)
    if lo is None:
        # Even negligible noise meets the target (tiny q and few steps); more noise than needed
        # is still private, so return the smallest sigma checked rather than search lower.
        logger.warning("target epsilon %s is already met with sigma %s", target_epsilon, hi)
        return hi
    sigma = float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: _make_accountant(accountant),
            lambda s: dp_event(noise_multiplier=s, sampling_rate=sampling_rate, steps=steps),
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(lo, hi),
            tol=_CALIBRATION_RTOL * lo,
        )
    )
    achieved = eps(sigma)
    if achieved > target_epsilon:  # calibrate_dp_mechanism promises otherwise; do not trust blindly
        raise PrivacyRequestError(
            f"calibration returned sigma {sigma} with epsilon {achieved} > target {target_epsilon}"
            "; this is a bug in the search, please report it with these parameters."
        )
    logger.info(
        "calibrated sigma=%.4f for epsilon<=%g at delta=%g (q=%g, %d steps, %s): epsilon=%.4f, "
        "%.2fs",
        *(sigma, target_epsilon, delta, sampling_rate, steps, accountant.value, achieved),
        time.perf_counter() - started,
    )
    return sigma


def _check_calibration_request(
    target_epsilon: float, sampling_rate: float, steps: int, delta: float
) -> None:
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise PrivacyRequestError(
            f"target epsilon: expected a finite number > 0, found {target_epsilon}. "
            "Fix: choose e.g. 1, 3 or 8."
        )
    if steps < 1 or not 0 < sampling_rate <= 1:
        raise PrivacyRequestError(
            f"calibration needs steps >= 1 and 0 < q <= 1, found steps={steps}, q={sampling_rate}."
            " Fix: train at least one step with a positive expected batch size."
        )
    _check_delta(delta)
