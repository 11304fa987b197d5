"""Training settings (the ``train:`` section of a config). No TensorFlow import here."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from covidct.data.units import PrivacyUnit
from covidct.evaluate import PatientScore
from covidct.privacy.accounting import Accountant, Sampling
from covidct.privacy.modes import ClippingMode, ExecutionMode, PerLayerSplit, UnitLoss


class OptimizerName(enum.Enum):
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"


@dataclass(frozen=True)
class TrainConfig:
    """How ``covidct train`` trains.

    Attributes:
        model: registry name (see covidct.models.available_models()). The defaults below are
            the recipe of the default model, ``attenuation`` (a fixed transform and a small head:
            full-batch DP-GD, many steps, EMA), chosen on synthetic data only
            (benchmarks/study_defaults.py); configs/cnn.yaml is the recipe of the CNNs.
        epochs: passes over the training units (an epoch = 1/q steps).
        batch_size: EXPECTED number of units per step (q = batch_size / N under Poisson);
            0 = every unit every step (q = 1: full-batch DP-GD).
        max_slices_per_unit: k, slices a patient contributes per step (a random subset).
        clip_norm: C, the L2 bound on one unit's gradient.
        clipping: flat, or per-layer (sum of C_l^2 = C^2).
        pipeline_stages: per-layer clipping only: 0 clips each layer on its own; N >= 1 splits
            the model into N consecutive stages of similar parameter count and clips each
            stage's parameters to C_s (what a pipeline-parallel model can do without a global
            norm).
        per_layer_split: per-layer bounds C_l: "equal", or "proportional" to each layer's
            parameter count.
        optimizer: sgd, momentum or adam (applied to the noisy averaged gradient).
        learning_rate: step size.
        momentum: for momentum SGD.
        privacy_unit: patient (default) or slice.
        sampling: poisson (default, what the accountant assumes) or shuffled.
        accountant: rdp (default) or pld.
        delta: 0 picks the default rule (below 1/N, stated in the report).
        execution: nanobatch, vectorized, or auto.
        chunk_units: units per graph call (memory is bounded by this, not the batch size).
        patient_score: how slice probabilities become a patient probability.
        unit_loss: how a unit's slices make its training loss: "mean" slice cross-entropy, or
            "lse" (cross-entropy of the log-mean-exp of the slice logits, a smooth max: a
            positive patient is explained by its lesion slices).
        augment: flip each training slice left-right at random and shift it by up to size/24
            pixels (per unit, drawn from (seed, step)); the unit is still clipped as one.
        augment_views: augmentation multiplicity (De et al. 2022): each of a unit's slices is
            seen in this many augmented views per step, and the unit's loss averages over all
            of them before its gradient is clipped, so the views cost no privacy (1 = off; above
            1 needs ``augment``). Compute per step grows by this factor.
        early_stopping_patience: epochs without validation improvement before stopping (0=off).
        restore_best: keep the weights of the epoch with the best validation patient AUC
            (else the last epoch's).
        initial_weights: optional weights file (.h5 / .keras) for public pretraining.
        device: auto, cpu, gpu or ipu.
        checkpoint_every: steps between checkpoints inside an epoch (0 = only at epoch ends);
            ``covidct train --resume RUN`` continues from the last one.
        ema: decay of an exponential moving average of the weights (De et al. 2022, "Unlocking
            High-Accuracy Differentially Private Image Classification through Scale"); 0 = off.
            Validation, the best epoch and the saved model use the average. It is computed from
            the noisy iterates only, so it costs no privacy.
        baseline_learning_rate: the learning rate of a run without DP (``--no-dp``, a sweep's
            ``inf``): its gradients are not clipped, so their scale differs and the baseline
            gets its own rate, tuned like the private one on synthetic data only; 0 = use
            ``learning_rate``.
        seed: seeds what the guarantee does not rest on: initialisation, which of a unit's
            slices are used, augmentation. The Poisson sample and the noise come from a secret
            key drawn per run (``covidct.privacy.secret``), never from this seed.
    """

    model: str = "attenuation"
    epochs: int = 400
    batch_size: int = 0
    max_slices_per_unit: int = 16
    clip_norm: float = 1.0
    clipping: ClippingMode = ClippingMode.FLAT
    pipeline_stages: int = 0
    per_layer_split: PerLayerSplit = PerLayerSplit.EQUAL
    optimizer: OptimizerName = OptimizerName.MOMENTUM
    learning_rate: float = 0.5
    momentum: float = 0.9
    privacy_unit: PrivacyUnit = PrivacyUnit.PATIENT
    sampling: Sampling = Sampling.POISSON
    accountant: Accountant = Accountant.RDP
    delta: float = 0.0
    execution: ExecutionMode = ExecutionMode.AUTO
    chunk_units: int = 128
    patient_score: PatientScore = PatientScore.MEAN_LOGIT
    unit_loss: UnitLoss = UnitLoss.MEAN_LOGIT
    augment: bool = False
    augment_views: int = 1
    early_stopping_patience: int = 0
    restore_best: bool = True
    initial_weights: str = ""
    device: str = "auto"
    checkpoint_every: int = 50
    seed: int = 0
    ema: float = 0.9
    baseline_learning_rate: float = 3.0
