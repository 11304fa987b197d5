"""What a privacy request may ask, checked before any calibration, with the advice the checks
give: enough units, a delta well below 1/N (and the default rule for it), a batch within the
data, and a calibrated noise that still leaves a usable update. The math they guard is in
``accounting``; the plan (``plan.PrivacyRequest.calibrate``) calls both.
"""

from __future__ import annotations

import math

from covidct.privacy.accounting import PrivacyRequestError

__all__ = [
    "MAX_AVERAGED_NOISE",
    "MIN_UNITS",
    "check_noise_is_usable",
    "default_delta",
    "validate_request",
]

# Below this many units, one unit is a large share of the data and DP-SGD cannot learn anything
# useful while hiding it; the check exists to catch a wrong split or manifest early.
MIN_UNITS = 10


def default_delta(n_units: int) -> float:
    """A round delta at least ten times below 1/N: ``10 ** floor(log10(1 / (10 N)))``.

    delta bounds the probability that the guarantee fails outright; a mechanism that publishes
    each unit's record with probability delta is (0, delta)-DP, so delta must be well below 1/N
    (Dwork & Roth 2014, "The Algorithmic Foundations of Differential Privacy", sec. 2.3).  The
    rule gives 1e-5 for N = 2000 and 1e-4 for N = 420.

    Args:
        n_units: N, the number of privacy units in the training set.

    Returns:
        A power of ten <= 1 / (10 N).

    Raises:
        PrivacyRequestError: ``n_units`` < 1.
    """
    if n_units < 1:
        raise PrivacyRequestError(f"expected at least one unit, found {n_units}.")
    return float(10.0 ** math.floor(math.log10(1.0 / (10 * n_units))))


def validate_request(
    *,
    target_epsilon: float | None,
    delta: float,
    n_units: int,
    expected_batch_size: float,
    steps: int,
) -> None:
    """Reject a privacy request that cannot give a meaningful guarantee, naming every problem.

    Args:
        target_epsilon: the budget for the run, or None when sigma is given directly.
        delta: target delta; must satisfy 0 < delta < 1/N.
        n_units: N, the number of privacy units in the training set.
        expected_batch_size: q * N; must lie in [1, N].
        steps: planned number of steps; at least 1.

    Raises:
        PrivacyRequestError: one message listing what was expected, what was found, and the fix.
    """
    problems: list[str] = []
    if n_units < MIN_UNITS:
        problems.append(
            f"number of privacy units: expected at least {MIN_UNITS}, found {n_units}. Fix: add "
            "patients (DP-SGD needs hundreds or more) or check that the training split is right."
        )
    if target_epsilon is not None and not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        problems.append(
            f"target epsilon: expected a finite number > 0 (typically 1 to 8), found "
            f"{target_epsilon}. Fix: set a positive target such as 3, or turn DP off for a "
            "non-private baseline."
        )
    inv_n = 1.0 / n_units if n_units > 0 else math.nan
    if not (delta > 0 and (n_units <= 0 or delta < inv_n)):
        fix = f"use delta = {default_delta(n_units):g}" if n_units > 0 else "choose delta << 1/N"
        problems.append(
            f"delta: expected 0 < delta < 1/N = {inv_n:.3g} (N = {n_units} units; common practice "
            f"is delta well below 1/N), found {delta}. Fix: {fix}."
        )
    if not 1 <= expected_batch_size <= max(n_units, 1):
        problems.append(
            f"expected batch size q*N: expected between 1 and N = {n_units} units per step "
            f"(0 < q <= 1), found {expected_batch_size}. Fix: choose a batch size of at least "
            f"one unit and at most {n_units} (usually well below N, so that sampling amplifies "
            "privacy)."
        )
    if steps < 1:
        problems.append(
            f"steps: expected at least 1, found {steps}. Fix: raise the number of epochs or lower "
            "the batch size so that training takes at least one step."
        )
    if problems:
        raise PrivacyRequestError("invalid privacy request:\n- " + "\n- ".join(problems))


# noise std of the averaged update, per coordinate, as a fraction of the clip norm: above it a
# step is mostly noise whatever sigma is (sigma 50 at 200 units per step is at this limit)
MAX_AVERAGED_NOISE = 0.25


def check_noise_is_usable(
    noise_multiplier: float,
    *,
    target_epsilon: float,
    max_noise_multiplier: float = 50.0,
    sampling_rate: float | None = None,
    epochs: float | None = None,
    n_units: int | None = None,
) -> None:
    """Stop a run whose calibrated sigma would drown every update in noise.

    Usable: sigma at most ``max_noise_multiplier``, or, when q and N are given, a noise in the
    averaged update of at most ``MAX_AVERAGED_NOISE`` of the clip norm per coordinate (sigma /
    (q N)): a large sigma is harmless when many units share each step, as in full-batch DP-GD
    of a small head on a few hundred patients.

    The suggested changes use the scaling of the moments-accountant bound, sigma ~ q sqrt(T) / eps
    = sqrt(q * epochs) / eps for T = epochs / q steps (Abadi et al. 2016, Thm. 1): to shrink
    sigma by a factor r, multiply epsilon by r, or divide q * epochs by r^2.

    Args:
        noise_multiplier: the calibrated sigma.
        target_epsilon: the epsilon it was calibrated for.
        max_noise_multiplier: the largest sigma considered usable.
        sampling_rate: q, to make the suggestions concrete (optional).
        epochs: planned epochs, likewise.
        n_units: N, likewise.

    Raises:
        PrivacyRequestError: sigma is not finite or exceeds ``max_noise_multiplier``.
    """
    batch = sampling_rate * n_units if sampling_rate and n_units else None
    averaged = noise_multiplier / batch if batch else math.inf
    if math.isfinite(noise_multiplier) and (
        noise_multiplier <= max_noise_multiplier or averaged <= MAX_AVERAGED_NOISE
    ):
        return
    r = noise_multiplier / max_noise_multiplier if math.isfinite(noise_multiplier) else math.inf
    lines = [
        f"calibrated noise multiplier sigma = {noise_multiplier:.4g} for target epsilon "
        f"{target_epsilon:g} exceeds the usable limit {max_noise_multiplier:g}"
        + (
            f" and, at {batch:.4g} expected units per step, the noise in the averaged update "
            f"(sigma / (q N) = {averaged:.3g} of the clip norm per coordinate) exceeds "
            f"{MAX_AVERAGED_NOISE:g}"
            if batch
            else ""
        )
        + ": the noisy updates would be almost pure noise. The sigma needed grows roughly as "
        "sqrt(q * epochs) / epsilon (Abadi et al. 2016, Thm. 1); to reach the limit, any one of:",
        f"- a larger target epsilon: about {target_epsilon * r:.3g} instead of {target_epsilon:g};",
    ]
    epochs_txt = f"about {epochs / r**2:.3g} instead of {epochs:g}" if epochs else f"/ {r**2:.3g}"
    lines.append(f"- fewer epochs (fewer steps): {epochs_txt};")
    if n_units is not None:
        lines.append(
            f"- more patients at the same batch size (q falls as 1/N): about {n_units * r**2:.3g} "
            f"instead of {n_units}; this lowers both sigma and the noise in the averaged update;"
        )
    else:
        lines.append(f"- more patients at the same batch size: about {r**2:.3g} times as many;")
    if sampling_rate is not None and n_units is not None:
        batch = sampling_rate * n_units
        batch_txt = f"about {batch / r**2:.3g} units per step instead of {batch:.3g}"
    else:
        batch_txt = f"q divided by {r**2:.3g}"
    lines.append(
        f"- a smaller expected batch size: {batch_txt}; this lowers sigma, but the noise in the "
        "averaged update, sigma*C/(q*N), grows, so prefer the other changes."
    )
    raise PrivacyRequestError("\n".join(lines))
