"""The privacy report's statements about the accounting, in words.

``sampling_assumption`` says whether epsilon is a proven bound for how batches were sampled;
``tf_privacy_statement`` runs tensorflow-privacy's own analysis of the same run as an independent
cross-check (imported lazily, without its TensorFlow-importing package ``__init__``, so this
module never imports TensorFlow). The numbers themselves come from ``covidct.privacy.accounting``.
"""

from __future__ import annotations

import math
import sys
import warnings

from covidct.privacy.accounting import PrivacyRequestError, Sampling, _check_delta

__all__ = ["sampling_assumption", "tf_privacy_statement"]


def sampling_assumption(sampling: Sampling) -> str:
    """The sentence the report prints about how batches were sampled.

    Args:
        sampling: how the training loop formed its batches.

    Returns:
        One or two sentences for the report's notes.
    """
    if sampling is Sampling.POISSON:
        return (
            "Sampling: each step included every privacy unit independently with probability q "
            "(Poisson sampling), exactly the event the accountant analyses (Poisson-subsampled "
            "Gaussian mechanism), so epsilon is a proven upper bound for this run."
        )
    return (
        "Sampling: batches were fixed-size consecutive chunks of a shuffled order, but epsilon "
        "was computed "
        "as if each unit had been included independently with probability q (Poisson sampling). "
        "No matching tight bound exists for shuffled batches and the true epsilon can be higher "
        "(Chua et al. 2024, 'How Private are DP-SGD Implementations?'): this epsilon rests on "
        "that assumption and is not a proven bound."
    )


def _tf_privacy_lib():  # type: ignore[no-untyped-def]
    # tensorflow_privacy/__init__ imports TensorFlow (and fails on TF >= 2.16); the flag makes it
    # skip that, exactly as covidct.tfsetup does, so the analysis submodule loads without TF.
    sys.skip_tf_privacy_import = True  # type: ignore[attr-defined]
    from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib

    return compute_dp_sgd_privacy_lib


def tf_privacy_statement(
    *,
    n_units: int,
    expected_batch_size: float,
    epochs: float,
    noise_multiplier: float,
    delta: float,
    sampling: Sampling,
    max_examples_per_user: int | None = None,
) -> str:
    """tensorflow-privacy's own privacy statement for the same run, as an independent cross-check.

    The result is a few ``covidct:`` lines (what its "examples" are here, and which of its lines
    applies to this run) followed by tensorflow-privacy's statement verbatim.

    Args:
        n_units: N; tensorflow-privacy calls the units "examples".
        expected_batch_size: q * N.
        epochs: steps * q.
        noise_multiplier: sigma.
        delta: target delta.
        sampling: how batches were formed (decides which of its lines applies).
        max_examples_per_user: for slice-level runs, the most slices one patient contributes:
            tensorflow-privacy then also prints a patient-level (group privacy) bound.

    Returns:
        The statement.

    Raises:
        PrivacyRequestError: a parameter is out of range.
    """
    if n_units < 1 or not 0 < expected_batch_size <= n_units or not epochs > 0:
        raise PrivacyRequestError(
            f"tensorflow-privacy statement needs N >= 1, 0 < batch <= N and epochs > 0, found "
            f"N={n_units}, batch={expected_batch_size}, epochs={epochs}."
        )
    _check_delta(delta)
    batch, steps, num_epochs = _tf_privacy_inputs(n_units, expected_batch_size, epochs)
    lib = _tf_privacy_lib()
    with warnings.catch_warnings():
        # Its group-privacy line search overflows harmlessly (it then prints inf with a note).
        warnings.simplefilter("ignore", RuntimeWarning)
        statement: str = lib.compute_dp_sgd_privacy_statement(
            number_of_examples=n_units,
            batch_size=batch,
            num_epochs=num_epochs,
            noise_multiplier=noise_multiplier,
            delta=delta,
            # TRAP: the default True halves sigma (microbatches double the sensitivity); covidct
            # clips each unit on its own, without microbatching.
            used_microbatching=False,
            max_examples_per_user=max_examples_per_user,
            accountant_type=lib.AccountantType.RDP,
        )
    header = _statement_header(
        n_units, expected_batch_size, batch, steps, sampling, max_examples_per_user
    )
    return "\n".join(header) + "\n\n" + statement


def _tf_privacy_inputs(
    n_units: int, expected_batch_size: float, epochs: float
) -> tuple[int, int, float]:
    """(batch_size, steps, num_epochs) to give tensorflow-privacy for the same run."""
    # Its batch_size is an int (it derives q = batch_size / N from it): round the expected batch
    # size; the covidct line of the header says when that changes q.
    batch = min(max(1, round(expected_batch_size)), n_units)
    q_tf = batch / n_units
    # It takes ceil(epochs / q) steps: keep float error (e.g. 625 * 0.032 / 0.032 = 625.0000001)
    # from adding a step, by passing the epochs of a whole number of steps.
    steps_f = epochs / q_tf
    steps = round(steps_f)
    if not math.isclose(steps_f, steps, rel_tol=1e-9):
        steps = math.ceil(steps_f)
    num_epochs = steps * batch / n_units
    while math.ceil(num_epochs / q_tf) > steps:
        num_epochs = math.nextafter(num_epochs, 0.0)
    return batch, steps, num_epochs


def _statement_header(
    n_units: int,
    expected_batch_size: float,
    batch: int,
    steps: int,
    sampling: Sampling,
    max_examples_per_user: int | None,
) -> list[str]:
    """The ``covidct:`` lines: what its inputs and "examples" are here, and which line applies."""
    header = [
        f"covidct: inputs number_of_examples={n_units} privacy units, batch_size={batch} (the "
        f"expected batch size {expected_batch_size:g} rounded to an integer), {steps} steps, "
        "used_microbatching=False (each unit clipped on its own)."
    ]
    if max_examples_per_user is None:
        header.append(
            "covidct: its 'examples' are covidct's privacy units, each clipped as one, so its "
            "example-level figures are unit-level ones; its user-level remark does not apply."
        )
    if not math.isclose(batch, expected_batch_size, rel_tol=1e-9):
        header.append(
            f"covidct: rounding the batch size changes q from {expected_batch_size / n_units:.6g} "
            f"to {(batch / n_units):.6g}, so its figures differ slightly from covidct's."
        )
    if sampling is Sampling.POISSON:
        header.append(
            "covidct: this run used Poisson sampling: the line 'Epsilon assuming Poisson "
            "sampling (*)' applies."
        )
    else:
        header.append(
            "covidct: this run used shuffled fixed-size batches; covidct reports the line "
            "'Epsilon assuming Poisson sampling (*)' as an assumption, and the line 'each example "
            "occurring once per epoch' is its figure without amplification by sampling."
        )
    return header
