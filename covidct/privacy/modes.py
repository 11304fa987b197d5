"""Enums of the DP step, importable without TensorFlow (configs are loaded before any TF import)."""

from __future__ import annotations

import enum


class ExecutionMode(enum.Enum):
    NANOBATCH = "nanobatch"  # physical batch of one unit, gradient accumulation (the paper's)
    VECTORIZED = "vectorized"  # per-unit gradients of a chunk at once (tf.vectorized_map)
    AUTO = "auto"  # the faster of the two on the chosen device


class ClippingMode(enum.Enum):
    FLAT = "flat"  # one L2 norm over all parameters
    PER_LAYER = "per-layer"  # one norm per parameter group, sum of C_g^2 = C^2


class PerLayerSplit(enum.Enum):
    """How per-layer clipping splits C over the layers (sum of C_l^2 = C^2 either way)."""

    EQUAL = "equal"
    PROPORTIONAL = "proportional"  # C_l^2 proportional to the layer's parameter count


class UnitLoss(enum.Enum):
    """How a unit's slices make its loss (the patient label is known, not each slice's)."""

    MEAN = "mean"  # the mean slice cross-entropy: every slice of a positive patient pushed up
    LSE = "lse"  # cross-entropy of the log-mean-exp of the slice logits (a smooth max)
    # cross-entropy of the mean slice logit: for a linear head, logistic regression on the
    # patient's mean slice features (convex, well conditioned: what few noisy steps need)
    MEAN_LOGIT = "mean-logit"
