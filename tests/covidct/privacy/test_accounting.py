"""Privacy accounting: independent dp_accounting checks, STACK.md reference figures, calibration."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from covidct.privacy.accounting import (
    Accountant,
    PrivacyRequestError,
    calibrate_noise,
    compose_runs,
    compute_epsilon,
    dp_event,
    epsilon_per_epoch,
    max_steps_within,
)

# The reference run of STACK.md: N = 2000, batch 64 (q = 0.032), 20 epochs = 625 steps.
N, Q, STEPS, SIGMA, DELTA = 2000, 0.032, 625, 1.1, 1e-5


def _independent_epsilon(accountant: dp_accounting.PrivacyAccountant) -> float:
    step = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(SIGMA))
    return float(accountant.compose(step, count=STEPS).get_epsilon(DELTA))


@pytest.mark.parametrize(
    ("accountant", "independent", "reference"),
    [
        (Accountant.RDP, rdp.RdpAccountant, 4.745),
        (Accountant.PLD, pld.PLDAccountant, 4.296),
    ],
)
def test_epsilon_matches_independent_dp_accounting_and_stack_reference(
    accountant: Accountant, independent: type, reference: float
) -> None:
    eps = compute_epsilon(
        noise_multiplier=SIGMA, sampling_rate=Q, steps=STEPS, delta=DELTA, accountant=accountant
    )
    assert eps == pytest.approx(_independent_epsilon(independent()), rel=1e-9)
    assert eps == pytest.approx(reference, abs=1e-3)


def test_composed_runs_equal_one_plain_accountant_over_all_their_steps() -> None:
    # the cached per-step RDP path (steps x one step's RDP) against dp_accounting composing
    # each run's events itself
    runs = [(1.1, 0.032, 625), (2.5, 0.1, 40), (1.1, 0.032, 3), (0.8, 0.5, 7)]
    acc = rdp.RdpAccountant()
    for sigma, q, n in runs:
        step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        acc.compose(step, count=n)
    got = compose_runs(runs, delta=DELTA, accountant=Accountant.RDP)
    assert got == pytest.approx(float(acc.get_epsilon(DELTA)), rel=1e-12)
    pld_got = compose_runs(runs[:2], delta=DELTA, accountant=Accountant.PLD)
    plain = pld.PLDAccountant()
    for sigma, q, n in runs[:2]:
        step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        plain.compose(step, count=n)
    assert pld_got == pytest.approx(float(plain.get_epsilon(DELTA)), rel=1e-9)
    assert compose_runs([], delta=DELTA) == 0.0


def test_max_steps_within_is_the_largest_count_that_fits() -> None:
    target = compute_epsilon(noise_multiplier=SIGMA, sampling_rate=Q, steps=300, delta=DELTA)
    kw = {"noise_multiplier": SIGMA, "sampling_rate": Q, "delta": DELTA}
    assert max_steps_within(target_epsilon=target, upper=1000, **kw) == 300
    assert max_steps_within(target_epsilon=target * 0.999, upper=1000, **kw) == 299
    assert max_steps_within(target_epsilon=target, upper=120, **kw) == 120
    assert max_steps_within(target_epsilon=1e-9, upper=50, **kw) == 0
    assert max_steps_within(target_epsilon=math.inf, upper=50, **kw) == 50


def test_dp_event_is_the_self_composed_poisson_sampled_gaussian() -> None:
    event = dp_event(noise_multiplier=SIGMA, sampling_rate=Q, steps=STEPS)
    assert event == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(SIGMA)), STEPS
    )
    assert isinstance(
        dp_event(noise_multiplier=SIGMA, sampling_rate=Q, steps=0), dp_accounting.NoOpDpEvent
    )


def test_epsilon_is_zero_without_steps_and_infinite_without_noise() -> None:
    assert compute_epsilon(noise_multiplier=SIGMA, sampling_rate=Q, steps=0, delta=DELTA) == 0.0
    assert compute_epsilon(noise_multiplier=0.0, sampling_rate=Q, steps=10, delta=DELTA) == math.inf


def test_epsilon_rejects_out_of_range_parameters() -> None:
    with pytest.raises(PrivacyRequestError, match="sampling rate"):
        compute_epsilon(noise_multiplier=1.0, sampling_rate=1.5, steps=10, delta=DELTA)
    with pytest.raises(PrivacyRequestError, match="noise multiplier"):
        compute_epsilon(noise_multiplier=-1.0, sampling_rate=Q, steps=10, delta=DELTA)
    with pytest.raises(PrivacyRequestError, match="delta"):
        compute_epsilon(noise_multiplier=1.0, sampling_rate=Q, steps=10, delta=0.0)


def test_epsilon_per_epoch_increases_and_ends_at_the_total() -> None:
    per_epoch = epsilon_per_epoch(
        noise_multiplier=SIGMA, sampling_rate=Q, steps_per_epoch=125, epochs=5, delta=DELTA
    )
    assert len(per_epoch) == 5
    assert all(a < b for a, b in itertools.pairwise(per_epoch))
    total = compute_epsilon(noise_multiplier=SIGMA, sampling_rate=Q, steps=STEPS, delta=DELTA)
    assert per_epoch[-1] == pytest.approx(total, rel=1e-9)


def test_pld_epsilon_per_epoch_ends_at_the_total() -> None:
    per_epoch = epsilon_per_epoch(
        noise_multiplier=2.0,
        sampling_rate=0.05,
        steps_per_epoch=20,
        epochs=3,
        delta=1e-5,
        accountant=Accountant.PLD,
    )
    total = compute_epsilon(
        noise_multiplier=2.0, sampling_rate=0.05, steps=60, delta=1e-5, accountant=Accountant.PLD
    )
    assert per_epoch[0] < per_epoch[1] < per_epoch[2]
    assert per_epoch[-1] == pytest.approx(total, rel=1e-3)


@pytest.mark.parametrize(("target", "reference"), [(1.0, 3.39), (3.0, 1.45), (8.0, 0.86)])
def test_calibrated_sigma_meets_target_tightly_and_matches_stack(
    target: float, reference: float
) -> None:
    sigma = calibrate_noise(target_epsilon=target, sampling_rate=Q, steps=STEPS, delta=DELTA)
    assert sigma == pytest.approx(reference, abs=0.006)
    eps = compute_epsilon(noise_multiplier=sigma, sampling_rate=Q, steps=STEPS, delta=DELTA)
    assert eps <= target
    # Tight: 2 % less noise already spends more than the target.
    less = compute_epsilon(noise_multiplier=sigma * 0.98, sampling_rate=Q, steps=STEPS, delta=DELTA)
    assert less > target


@pytest.mark.parametrize(
    ("target", "q", "steps", "delta"),
    [(0.5, 0.1, 50, 1e-4), (2.0, 0.01, 2000, 1e-6), (10.0, 1.0, 3, 1e-3)],
)
def test_calibrated_sigma_never_exceeds_target_across_regimes(
    target: float, q: float, steps: int, delta: float
) -> None:
    sigma = calibrate_noise(target_epsilon=target, sampling_rate=q, steps=steps, delta=delta)
    assert compute_epsilon(noise_multiplier=sigma, sampling_rate=q, steps=steps, delta=delta) <= (
        target
    )
    assert (
        compute_epsilon(noise_multiplier=sigma * 0.98, sampling_rate=q, steps=steps, delta=delta)
        > target
    )


def test_pld_calibration_meets_target_and_matches_stack() -> None:
    sigma = calibrate_noise(
        target_epsilon=1.0, sampling_rate=Q, steps=STEPS, delta=DELTA, accountant=Accountant.PLD
    )
    assert sigma == pytest.approx(3.13, abs=0.006)
    eps = compute_epsilon(
        noise_multiplier=sigma, sampling_rate=Q, steps=STEPS, delta=DELTA, accountant=Accountant.PLD
    )
    assert eps <= 1.0


def test_calibration_reports_an_unreachable_target() -> None:
    # No subsampling and 1000 steps: epsilon 0.01 needs sigma of about 1.5e4.
    with pytest.raises(PrivacyRequestError, match="unreachable"):
        calibrate_noise(target_epsilon=0.01, sampling_rate=1.0, steps=1000, delta=1e-5)


def test_calibration_rejects_nonpositive_target() -> None:
    with pytest.raises(PrivacyRequestError, match="target epsilon"):
        calibrate_noise(target_epsilon=0.0, sampling_rate=Q, steps=STEPS, delta=DELTA)
