"""What a privacy request may ask: each refusal names what was expected, what was found and
the fix; the default delta; when a calibrated noise is still usable."""

from __future__ import annotations

import math

import pytest

from covidct.privacy.accounting import PrivacyRequestError
from covidct.privacy.limits import (
    MIN_UNITS,
    check_noise_is_usable,
    default_delta,
    validate_request,
)


@pytest.mark.parametrize("n", [10, 420, 2000, 10**6])
def test_default_delta_is_a_round_number_well_below_one_over_n(n: int) -> None:
    delta = default_delta(n)
    assert delta <= 1 / (10 * n) < 1 / n
    assert math.log10(delta) == round(math.log10(delta))


def test_default_delta_for_stack_reference_is_1e_5() -> None:
    assert default_delta(2000) == 1e-5  # STACK.md's reference run: N = 2000


_GOOD = {
    "target_epsilon": 3.0,
    "delta": 1e-5,
    "n_units": 2000,
    "expected_batch_size": 64.0,
    "steps": 625,
}


def test_valid_request_passes() -> None:
    validate_request(**_GOOD)  # type: ignore[arg-type]
    validate_request(**{**_GOOD, "target_epsilon": None})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "expected_words"),
    [
        ({"target_epsilon": 0.0}, ["target epsilon", "found 0.0", "Fix"]),
        ({"target_epsilon": -1.0}, ["target epsilon", "found -1.0", "Fix"]),
        ({"target_epsilon": math.nan}, ["target epsilon", "found nan", "Fix"]),
        ({"target_epsilon": math.inf}, ["target epsilon", "found inf", "Fix"]),
        ({"delta": 0.0}, ["delta", "1/N = 0.0005", "found 0.0", "1e-05"]),
        ({"delta": 1e-3}, ["delta", "1/N", "found 0.001", "1e-05"]),
        ({"delta": 5e-4}, ["delta", "found 0.0005"]),  # exactly 1/N is not below 1/N
        ({"expected_batch_size": 2500.0}, ["expected batch size", "found 2500", "at most 2000"]),
        ({"expected_batch_size": 0.5}, ["expected batch size", "found 0.5", "at least one"]),
        ({"n_units": 5, "delta": 1e-3}, ["privacy units", f"at least {MIN_UNITS}", "found 5"]),
        ({"steps": 0}, ["steps", "at least 1", "found 0", "Fix"]),
    ],
)
def test_each_invalid_request_raises_with_expected_found_and_fix(
    change: dict[str, float], expected_words: list[str]
) -> None:
    with pytest.raises(PrivacyRequestError) as err:
        validate_request(**{**_GOOD, **change})  # type: ignore[arg-type]
    message = str(err.value)
    for word in expected_words:
        assert word in message


def test_all_problems_of_a_request_are_named_at_once() -> None:
    with pytest.raises(PrivacyRequestError) as err:
        validate_request(
            target_epsilon=-1.0, delta=0.5, n_units=2000, expected_batch_size=64.0, steps=0
        )
    assert str(err.value).count("\n- ") == 3


def test_usable_noise_passes_and_absurd_noise_names_the_right_knobs() -> None:
    check_noise_is_usable(1.4, target_epsilon=3.0)
    with pytest.raises(PrivacyRequestError) as err:
        check_noise_is_usable(
            100.0, target_epsilon=0.1, sampling_rate=0.5, epochs=20.0, n_units=100
        )
    message = str(err.value)
    # r = 100 / 50 = 2: epsilon x2, epochs / 4, patients x4, batch / 4.
    assert "sigma = 100" in message and "limit 50" in message
    assert "larger target epsilon: about 0.2" in message
    assert "fewer epochs" in message and "about 5 instead of 20" in message
    assert "more patients" in message and "about 400 instead of 100" in message
    assert "smaller expected batch size" in message and "about 12.5 units per step" in message
    with pytest.raises(PrivacyRequestError, match="inf"):
        check_noise_is_usable(math.inf, target_epsilon=1.0)


def test_a_large_sigma_shared_by_many_units_per_step_is_usable() -> None:
    """Full-batch DP-GD at epsilon 1 over 400 steps needs sigma ~70 for 420 patients: the
    averaged update's noise is 70 / 420 = 0.17 of C per coordinate, usable; the same sigma at
    64 units per step (1.1 of C) is not."""
    check_noise_is_usable(70.0, target_epsilon=1.0, sampling_rate=1.0, epochs=400, n_units=420)
    with pytest.raises(PrivacyRequestError, match=r"sigma / \(q N\) = 1.09"):
        check_noise_is_usable(70.0, target_epsilon=1.0, sampling_rate=0.1, epochs=40, n_units=640)
    with pytest.raises(PrivacyRequestError, match=r"= 0\.476 of the clip norm"):
        check_noise_is_usable(200.0, target_epsilon=0.3, sampling_rate=1.0, epochs=400, n_units=420)
