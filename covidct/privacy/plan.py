"""A run's privacy numbers, with one owner: the request, its calibration, and every epsilon.

``PrivacyRequest`` is what the user asked for (target epsilon, delta rule, unit, sampling,
accountant, clipping); ``PrivacyRequest.calibrate(n_units)`` turns it into a ``PrivacyPlan``:
sampling rate, steps and the noise multiplier sigma, chosen so that the planned steps spend at
most the target. The plan builds the mechanism's settings (``dp_settings``), the ledger entry and
the report's privacy numbers; its ``epsilon`` is the only way a run's epsilon is computed (through
``accounting.compose_runs``, over the same event as ``event``).

    request = PrivacyRequest.from_train(config, target_epsilon=3.0)
    plan = request.calibrate(n_units=420)
    plan.epsilon()          # the planned steps
    plan.epsilon(steps=17)  # after 17 steps (a resume, an early stop)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dp_accounting

from covidct.privacy import accounting, ledger, limits
from covidct.privacy.accounting import Accountant, Sampling
from covidct.privacy.modes import ClippingMode, PerLayerSplit

if TYPE_CHECKING:  # annotations only: privacy/ does not import the data or training layers
    from covidct.data.units import PrivacyUnit
    from covidct.privacy.mechanism import DPSettings
    from covidct.train_config import TrainConfig

__all__ = ["PrivacyPlan", "PrivacyRequest", "plan_privacy"]


@dataclass(frozen=True, kw_only=True)
class PrivacyRequest:
    """What a run asks of privacy, before the data's size is known.

    Attributes:
        target_epsilon: the budget per privacy unit; ``math.inf`` = no DP (the baseline).
        delta: 0 = the default rule (a round number below 1/(10 N), ``limits.default_delta``).
        unit: patient or slice.
        sampling: Poisson (what the accountant assumes) or shuffled.
        accountant: RDP or PLD.
        clip_norm: C, each unit's gradient norm bound.
        clipping: one norm over the whole gradient (flat) or one per layer group.
        proportional_split: per-layer clipping gives each group a share of C^2 proportional to
            its parameter count (else equal shares).
        batch_size: expected units per step; 0 = every unit every step (q = 1).
        epochs: passes over the data (steps = epochs / q).
    """

    target_epsilon: float
    delta: float
    unit: PrivacyUnit
    sampling: Sampling
    accountant: Accountant
    clip_norm: float
    batch_size: int
    epochs: int
    clipping: ClippingMode = ClippingMode.FLAT
    proportional_split: bool = False

    @classmethod
    def from_train(cls, config: TrainConfig, *, target_epsilon: float) -> PrivacyRequest:
        return cls(
            target_epsilon=target_epsilon,
            delta=config.delta,
            unit=config.privacy_unit,
            sampling=config.sampling,
            accountant=config.accountant,
            clip_norm=config.clip_norm,
            batch_size=config.batch_size,
            epochs=config.epochs,
            clipping=config.clipping,
            proportional_split=config.per_layer_split is PerLayerSplit.PROPORTIONAL,
        )

    @property
    def dp(self) -> bool:
        return math.isfinite(self.target_epsilon)

    def calibrate(self, n_units: int) -> PrivacyPlan:
        """Sampling rate, steps, delta and the calibrated noise multiplier for ``n_units``.

        Raises:
            PrivacyRequestError: epsilon <= 0, delta >= 1/N, batch larger than N, too few
                units, or an epsilon that needs absurd noise.
        """
        batch = self.batch_size or n_units  # 0: every unit every step (full-batch DP-GD)
        q = min(1.0, batch / max(n_units, 1))
        steps_per_epoch = max(1, round(1.0 / q))
        steps = self.epochs * steps_per_epoch
        delta = self.delta or limits.default_delta(n_units)
        limits.validate_request(
            target_epsilon=self.target_epsilon if self.dp else None,
            delta=delta,
            n_units=n_units,
            expected_batch_size=batch,
            steps=steps,
        )
        sigma = 0.0
        if self.dp:
            sigma = accounting.calibrate_noise(
                target_epsilon=self.target_epsilon,
                sampling_rate=q,
                steps=steps,
                delta=delta,
                accountant=self.accountant,
            )
            limits.check_noise_is_usable(
                sigma,
                target_epsilon=self.target_epsilon,
                sampling_rate=q,
                epochs=self.epochs,
                n_units=n_units,
            )
        return PrivacyPlan(
            request=self,
            n_units=n_units,
            sampling_rate=q,
            steps_per_epoch=steps_per_epoch,
            steps=steps,
            delta=delta,
            noise_multiplier=sigma,
        )


@dataclass(frozen=True, kw_only=True)
class PrivacyPlan:
    """The privacy numbers of a run, fixed before training starts."""

    request: PrivacyRequest
    n_units: int
    sampling_rate: float
    steps_per_epoch: int
    steps: int
    delta: float
    noise_multiplier: float

    @property
    def dp(self) -> bool:
        return self.request.dp

    @property
    def target_epsilon(self) -> float:
        return self.request.target_epsilon

    @property
    def expected_batch_size(self) -> float:
        return self.sampling_rate * self.n_units

    @property
    def clip_norm(self) -> float | None:
        return self.request.clip_norm if self.dp else None

    def dp_settings(self) -> DPSettings:
        """What the mechanism needs of this plan (no clipping and no noise without DP)."""
        from covidct.privacy.mechanism import DPSettings

        return DPSettings(
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            expected_batch_size=self.expected_batch_size,
            clipping=self.request.clipping,
            proportional_split=self.request.proportional_split,
        )

    def event(self, steps: int | None = None) -> dp_accounting.DpEvent:
        """The mechanism as dp_accounting sees it: ``steps`` (default: the planned ones)
        Poisson-subsampled Gaussian steps."""
        return accounting.dp_event(
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate,
            steps=self.steps if steps is None else steps,
        )

    def epsilon(self, steps: int | None = None) -> float:
        """Epsilon at ``delta`` after ``steps`` (default: the planned ones); inf without DP.
        The one place a run's epsilon is computed."""
        if not self.dp:
            return math.inf
        return accounting.compute_epsilon(
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate,
            steps=self.steps if steps is None else steps,
            delta=self.delta,
            accountant=self.request.accountant,
        )

    def epsilon_per_epoch(self) -> list[float]:
        """Epsilon after each planned epoch (the last equals ``epsilon()``)."""
        if not self.dp:
            return [math.inf] * self.request.epochs
        return accounting.epsilon_per_epoch(
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate,
            steps_per_epoch=self.steps_per_epoch,
            epochs=self.request.epochs,
            delta=self.delta,
            accountant=self.request.accountant,
        )

    def ledger_entry(self, run_id: str, run_dir: Path) -> ledger.LedgerEntry:
        """The ledger's record of a run about to start: its PLANNED steps and epsilon."""
        return ledger.LedgerEntry(
            run_id=run_id,
            run_dir=str(run_dir.resolve()),
            started=ledger.now(),
            status="started",
            dp=self.dp,
            privacy_unit=self.request.unit.value,
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate,
            steps=self.steps,
            delta=self.delta,
            epsilon=self.epsilon(),
        )

    def describe(self, learning_rate: float) -> str:
        """One line for the console before training."""
        unit = self.request.unit.value
        if not self.dp:
            return (
                f"NO differential privacy (baseline): {self.n_units} {unit} units, "
                f"batch ~{self.expected_batch_size:.0f}, {self.steps} steps, learning rate "
                f"{learning_rate:g}"
            )
        return (
            f"target epsilon {self.target_epsilon:g} at delta {self.delta:.0e} for each {unit}: "
            f"{self.n_units} units, q={self.sampling_rate:.4f} ({self.request.sampling.value}), "
            f"{self.steps} steps, noise multiplier {self.noise_multiplier:.3f}, "
            f"clip {self.request.clip_norm:g}"
        )

    def noise_to_signal(self, trainable: int) -> str:
        """The noise in one averaged update against its clipped signal, for ``trainable``
        parameters.

        The update is (sum of clipped unit gradients + N(0, sigma^2 C^2 I_d)) / (q N): the
        signal has norm at most C, the noise about sigma C sqrt(d) / (q N).
        """
        qn = self.expected_batch_size

        def ratio(d: float) -> float:
            return self.noise_multiplier * math.sqrt(d) / qn

        r = ratio(trainable)
        text = (
            f"noise-to-signal per step: sigma*sqrt(d)/(qN) = {self.noise_multiplier:.3g} x "
            f"sqrt({trainable}) / {qn:.0f} = {r:.2f} (noise norm per unit of clipped signal, "
            f"d = trainable parameters); at this N a 23 k-parameter CNN would have "
            f"{ratio(23_000):.2f}"
        )
        if r > 1:
            text += (
                ": each update is mostly noise. Fewer trainable parameters (a head on fixed "
                "features, such as the default attenuation model), more patients or a larger "
                "epsilon help."
            )
        return text


def plan_privacy(*, n_units: int, config: TrainConfig, target_epsilon: float) -> PrivacyPlan:
    """``PrivacyRequest.from_train(config, target_epsilon=...).calibrate(n_units)``."""
    return PrivacyRequest.from_train(config, target_epsilon=target_epsilon).calibrate(n_units)
