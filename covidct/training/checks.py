"""What is refused or warned about before anything is counted: settings a model cannot honour,
slices a transform cannot read, a resume that would change the mechanism, empty splits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from covidct import checkpoint
from covidct.data.units import DataError, PrivacyUnit, Units, image_size, load_units
from covidct.privacy.plan import PrivacyPlan
from covidct.train_config import TrainConfig


def check_same_mechanism(run: Path, saved: dict[str, Any], plan: PrivacyPlan) -> None:
    """A resume must add steps of the mechanism the counted steps were taken with."""
    for key, now in (
        ("noise_multiplier", plan.noise_multiplier),
        ("sampling_rate", plan.sampling_rate),
        ("delta", plan.delta),
    ):
        if key not in saved:
            continue  # a plan written before covidct stored it
        before = float(saved[key])
        if not math.isclose(before, now, rel_tol=1e-9, abs_tol=1e-12):
            raise checkpoint.ResumeError(
                f"{run} was trained with {key} {before:.6g}; resuming now would use {now:.6g} "
                "(the accounting library or the prepared data changed), and its steps would "
                "not compose as counted. Refusing to resume: start a new run with covidct train."
            )


def unit_basis_warning(units: Units) -> str | None:
    """Before training: say when the "patients" are not known to be persons."""
    from data_prep.deid import UnitBasis

    persons = sum(1 for b in units.bases if b == UnitBasis.DICOM_PATIENT_ID.value)
    if not units.bases or persons == len(units):
        return None
    kinds = sorted({UnitBasis(b).covers for b in units.bases if b in UnitBasis._value2member_map_})
    head = (
        f"warning: none of the {len(units)} training units is identified by a DICOM PatientID"
        if persons == 0
        else f"warning: {len(units) - persons} of the {len(units)} training units are not "
        "identified by a DICOM PatientID"
    )
    return (
        f"{head} ({'; '.join(k for k in kinds if not k.startswith('a patient'))}): "
        "--privacy-unit patient then protects each such unit, not necessarily the person "
        "(the report says so). Prepare DICOM with PatientID, or one folder per patient."
    )


def check_clipping(config: TrainConfig) -> None:
    from covidct.config import ConfigError
    from covidct.privacy.modes import ClippingMode

    if config.pipeline_stages < 0:
        raise ConfigError(f"train.pipeline_stages must be >= 0, got {config.pipeline_stages}")
    if config.pipeline_stages and config.clipping is not ClippingMode.PER_LAYER:
        raise ConfigError(
            "train.pipeline_stages clips each stage on its own, which is per-layer clipping: "
            "add --clipping per-layer (or set train.pipeline_stages: 0)"
        )


def check_slices_fit(config: TrainConfig, prep: Path, say: Callable[[str], None]) -> None:
    from covidct.features.cache import check_slices
    from covidct.models import feature_spec

    spec = feature_spec(config.model)
    note = check_slices(spec, prep, config.model) if spec is not None else None
    if note:
        say(note)


def check_model(config: TrainConfig) -> None:
    """Settings that a model on fixed features cannot honour fail before anything is counted."""
    from covidct.config import ConfigError
    from covidct.models import feature_spec

    if not 0.0 <= config.ema < 1.0:
        raise ConfigError(f"train.ema must be in [0, 1), got {config.ema}")
    if config.augment_views < 1:
        raise ConfigError(f"train.augment_views must be 1 or more, got {config.augment_views}")
    if config.augment_views > 1 and not config.augment:
        raise ConfigError(
            f"train.augment_views={config.augment_views} averages augmented views of each slice, "
            "but train.augment is off, so every view would be the same slice: set "
            "train.augment true, or train.augment_views 1"
        )
    if feature_spec(config.model) is None:
        return
    cnn = "or choose a CNN that learns from slices (--set train.model=gn_cnn_small)"
    if config.augment:
        raise ConfigError(
            f"train.augment flips and shifts slices, but model {config.model!r} trains on cached "
            f"features of the unaugmented slices: set train.augment false, {cnn}"
        )
    if config.pipeline_stages:
        raise ConfigError(
            f"train.pipeline_stages splits a deep model across IPUs; {config.model!r} trains one "
            f"small layer: set train.pipeline_stages 0, {cnn}"
        )


def pipeline_ipus(config: TrainConfig) -> int:
    """IPUs to select for a private run: one per pipeline stage with per-stage clipping
    (``covidct.ipu.pipeline`` maps stage s to IPU s), else 1. Non-private runs take one."""
    from covidct.privacy.modes import ClippingMode

    if config.clipping is ClippingMode.PER_LAYER and config.pipeline_stages > 1:
        return config.pipeline_stages
    return 1


def pipeline_stage_groups(
    config: TrainConfig, prep: Path, model: Any = None
) -> list[list[int]] | None:
    """Per-stage clipping groups (None unless train.pipeline_stages is set)."""
    if not config.pipeline_stages:
        return None
    from covidct.config import ConfigError
    from covidct.privacy.stages import StageError, stage_groups

    if model is None:
        from covidct.models import build_model

        model = build_model(config.model, input_size=image_size(prep), seed=config.seed)
    try:
        return stage_groups(model, config.pipeline_stages)
    except StageError as exc:
        raise ConfigError(f"train.pipeline_stages: {exc}") from exc


def load_splits(prep: Path, config: TrainConfig) -> tuple[Units, Units, Units]:
    train_units = load_units(prep, "train", config.privacy_unit)
    val = load_units(prep, "validation", PrivacyUnit.PATIENT)
    test = load_units(prep, "test", PrivacyUnit.PATIENT)
    for name, units in (("train", train_units), ("validation", val), ("test", test)):
        if len(units) == 0:
            raise DataError(f"the {name} split of {prep} is empty: prepare more patients")
    return train_units, val, test
