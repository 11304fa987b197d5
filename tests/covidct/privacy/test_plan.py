"""The privacy plan: the one owner of a run's epsilon, checked against dp_accounting directly."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import dp_accounting
import pytest

from covidct.privacy.accounting import Accountant
from covidct.privacy.plan import PrivacyPlan, PrivacyRequest, plan_privacy
from covidct.train_config import TrainConfig

CONFIG = TrainConfig(batch_size=32, epochs=5, delta=1e-4)


def _reference_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """dp_accounting's own RDP accountant on the Poisson-subsampled Gaussian, built here."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(event)
    return acc.get_epsilon(delta)


def test_the_calibrated_plan_spends_at_most_the_target_by_an_independent_accountant():
    plan = plan_privacy(n_units=400, config=CONFIG, target_epsilon=3.0)
    assert plan.sampling_rate == pytest.approx(32 / 400) and plan.steps == 5 * 12
    want = _reference_epsilon(plan.noise_multiplier, plan.sampling_rate, plan.steps, 1e-4)
    assert plan.epsilon() == pytest.approx(want, rel=1e-6)
    assert want <= 3.0 and want > 2.9  # calibrated to the target, not far below it
    mid = _reference_epsilon(plan.noise_multiplier, plan.sampling_rate, 17, 1e-4)
    assert plan.epsilon(17) == pytest.approx(mid, rel=1e-6)
    per_epoch = plan.epsilon_per_epoch()
    assert len(per_epoch) == 5 and per_epoch[-1] == pytest.approx(plan.epsilon())
    assert per_epoch == sorted(per_epoch)


def test_the_plans_event_is_what_dp_accounting_composes():
    plan = plan_privacy(n_units=400, config=CONFIG, target_epsilon=3.0)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(plan.event())
    assert acc.get_epsilon(plan.delta) == pytest.approx(plan.epsilon(), rel=1e-6)


def test_the_ledger_entry_and_the_request_come_from_the_same_plan(tmp_path: Path):
    plan = plan_privacy(
        n_units=400, config=replace(CONFIG, accountant=Accountant.PLD), target_epsilon=2.0
    )
    entry = plan.ledger_entry("r", tmp_path / "r")
    assert entry.epsilon == plan.epsilon() and entry.steps == plan.steps
    assert entry.noise_multiplier == plan.noise_multiplier and entry.delta == plan.delta
    assert plan.request == PrivacyRequest.from_train(
        replace(CONFIG, accountant=Accountant.PLD), target_epsilon=2.0
    )


def test_without_dp_every_epsilon_is_infinite_and_there_is_no_noise():
    plan = plan_privacy(n_units=400, config=CONFIG, target_epsilon=math.inf)
    assert not plan.dp and plan.noise_multiplier == 0.0 and plan.clip_norm is None
    assert plan.epsilon() == math.inf and plan.epsilon_per_epoch() == [math.inf] * 5
    assert "NO differential privacy" in plan.describe(0.01)


def test_noise_to_signal_is_sigma_sqrt_d_over_qn_and_warns_when_noise_dominates():
    request = PrivacyRequest.from_train(TrainConfig(), target_epsilon=3.0)
    plan = PrivacyPlan(
        request=request,
        n_units=400,
        sampling_rate=1.0,
        steps_per_epoch=1,
        steps=200,
        delta=1e-4,
        noise_multiplier=20.0,
    )
    small = plan.noise_to_signal(400)
    assert "= 1.00 " in small and "mostly noise" not in small  # 20 * 20 / 400
    big = plan.noise_to_signal(23_000)
    assert f"= {20 * math.sqrt(23_000) / 400:.2f}" in big and "mostly noise" in big


def test_the_mechanisms_settings_are_the_plans_numbers():
    from covidct.privacy.modes import ClippingMode, PerLayerSplit

    config = replace(
        CONFIG, clipping=ClippingMode.PER_LAYER, per_layer_split=PerLayerSplit.PROPORTIONAL
    )
    plan = plan_privacy(n_units=400, config=config, target_epsilon=3.0)
    s = plan.dp_settings()
    assert s.noise_multiplier == plan.noise_multiplier and s.clip_norm == config.clip_norm
    assert s.expected_batch_size == pytest.approx(plan.sampling_rate * 400)
    assert s.clipping is ClippingMode.PER_LAYER and s.proportional_split
    baseline = plan_privacy(n_units=400, config=config, target_epsilon=math.inf).dp_settings()
    assert baseline.clip_norm is None and baseline.noise_multiplier == 0.0
