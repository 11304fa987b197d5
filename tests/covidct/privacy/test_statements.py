"""The report's statements about the accounting: tensorflow-privacy's cross-check and the
sampling assumption."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from covidct.privacy.accounting import Sampling, compute_epsilon
from covidct.privacy.statements import sampling_assumption, tf_privacy_statement

# The reference run of STACK.md: N = 2000, batch 64 (q = 0.032), 20 epochs = 625 steps.
N, Q, STEPS, SIGMA, DELTA = 2000, 0.032, 625, 1.1, 1e-5


def _poisson_line_epsilon(statement: str) -> float:
    match = re.search(r"Epsilon assuming Poisson sampling \(\*\):\s+([0-9.]+)", statement)
    assert match, statement
    return float(match.group(1))


def test_tf_privacy_statement_reports_the_same_rdp_epsilon_without_microbatching() -> None:
    statement = tf_privacy_statement(
        n_units=N,
        expected_batch_size=Q * N,
        epochs=STEPS * Q,  # 20.000000000000004 in floats: must still mean 625 steps
        noise_multiplier=SIGMA,
        delta=DELTA,
        sampling=Sampling.POISSON,
    )
    ours = compute_epsilon(noise_multiplier=SIGMA, sampling_rate=Q, steps=STEPS, delta=DELTA)
    theirs = _poisson_line_epsilon(statement)
    assert theirs == pytest.approx(ours, abs=1e-3)
    # With the default used_microbatching=True it would halve sigma and print ~25.1.
    assert theirs < 10
    assert "without microbatching" in statement
    assert "applies" in statement


def test_accounting_and_report_never_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "from covidct.privacy import accounting, report, statements\n"
        "statements.tf_privacy_statement(n_units=100, expected_batch_size=10, epochs=1,"
        " noise_multiplier=1.0, delta=1e-4, sampling=accounting.Sampling.POISSON)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tf_privacy_statement_says_shuffled_runs_rest_on_the_poisson_assumption() -> None:
    statement = tf_privacy_statement(
        n_units=300,
        expected_batch_size=29.6,
        epochs=2.0,
        noise_multiplier=1.0,
        delta=1e-4,
        sampling=Sampling.SHUFFLED,
    )
    assert "assumption" in statement
    assert "rounded" in statement and "batch_size=30" in statement


def test_tf_privacy_statement_adds_group_privacy_for_slice_level_runs() -> None:
    statement = tf_privacy_statement(
        n_units=1000,
        expected_batch_size=100,
        epochs=1.0,
        noise_multiplier=4.0,
        delta=1e-5,
        sampling=Sampling.POISSON,
        max_examples_per_user=4,
    )
    flat = " ".join(statement.split())  # it wraps lines at 80 columns
    assert "at most 4 examples per user" in flat
    assert "User-level DP" in flat
    assert "user-level remark does not apply" not in statement


def test_sampling_assumption_differs_by_mode_and_flags_shuffling() -> None:
    poisson = sampling_assumption(Sampling.POISSON)
    shuffled = sampling_assumption(Sampling.SHUFFLED)
    assert "Poisson" in poisson and "proven" in poisson
    assert "assumption" in shuffled and "not a proven bound" in shuffled
