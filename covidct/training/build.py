"""What a run trains: the model (on slices, or a head on cached features) and the DP step that
executes the privacy plan (``covidct.privacy.mechanism.DPStep``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from covidct import checkpoint
from covidct.data.units import DataError, SliceStore, image_size
from covidct.privacy.modes import ExecutionMode
from covidct.public_start import PublicStart, load_start
from covidct.train_config import OptimizerName, TrainConfig
from covidct.training.checks import pipeline_stage_groups
from covidct.training.job import Job


def build_model(job: Job, device: Any, saved: checkpoint.SavedState | None) -> tuple[Any, Any]:
    """What the model reads (slices, or cached features) and the model, on the device."""
    from covidct.models import build_head, build_model, feature_spec, validate_model

    config = job.config
    fspec = feature_spec(config.model)
    store: Any = SliceStore(job.prep)
    if fspec is not None:
        from covidct.features.cache import training_features

        store, mean, variance = training_features(
            job.prep, fspec, [job.train_units, job.val, job.test], job.val, say=job.say
        )
        public = job.start.standardise if job.start is not None else None
        if public is not None:  # the pretrained head's own constants (public statistics)
            mean, variance = public
    with device.strategy.scope():
        if fspec is not None:
            model = build_head(config.model, mean=mean, variance=variance)
        else:
            model = build_model(config.model, input_size=image_size(job.prep), seed=config.seed)
        validate_model(model)
        if job.start is not None and saved is None:
            load_initial_weights(model, job.start.weights)
    return store, model


def build_step(
    job: Job, device: Any, model: Any, secret: Any, execution: ExecutionMode
) -> tuple[Any, Any]:
    """The optimizer and the DP step that executes the plan (``mechanism.DPStep``)."""
    from covidct.privacy.mechanism import DPStep
    from covidct.privacy.step import DPGradient
    from covidct.tfsetup import keras

    config, plan, say = job.config, job.plan, job.say
    with device.strategy.scope():
        optimizer = make_optimizer(config, keras)
        optimizer.build(model.trainable_variables)  # its slots exist, so a checkpoint holds them
        groups = pipeline_stage_groups(config, job.prep, model)
        settings = plan.dp_settings()
        dp: DPStep
        if groups is not None and device.kind == "ipu" and len(groups) > 1 and plan.dp:
            from covidct.ipu.pipeline import PipelinedDPGradient

            say(
                f"per-stage clipping: {len(groups)} stages pipelined over {len(groups)} IPUs "
                "(stage s on IPU s), each clipped on its own"
            )
            dp = PipelinedDPGradient(
                model,
                settings=settings,
                secret=secret,
                groups=groups,
                unit_loss=config.unit_loss,
                runner=device.run,
            )
        else:
            if groups is not None:
                say(
                    f"per-stage clipping: {len(groups)} stage(s) of consecutive layers, each "
                    "clipped on its own"
                )
            dp = DPGradient(
                model,
                settings=settings,
                mode=execution,
                secret=secret,
                layer_groups=groups,
                unit_loss=config.unit_loss,
                jit_compile=device.jit_compile,
                runner=device.run,
            )
    return optimizer, dp


def make_optimizer(config: TrainConfig, keras: Any) -> Any:
    if config.optimizer is OptimizerName.ADAM:
        return keras.optimizers.Adam(learning_rate=config.learning_rate)
    momentum = config.momentum if config.optimizer is OptimizerName.MOMENTUM else 0.0
    return keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=momentum)


def public_start(config: TrainConfig, prep: Path) -> PublicStart | None:
    """train.initial_weights checked against its provenance and ``prep`` (before anything is
    counted), or None."""
    if not config.initial_weights:
        return None
    return load_start(Path(config.initial_weights), config=config, prep=prep)


def load_initial_weights(model: Any, path: Path) -> None:
    if not path.exists():
        raise DataError(f"initial weights {path} not found")
    try:
        model.load_weights(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot load initial weights from {path} into {model.name}: {exc} "
            "(the file must come from the same architecture and input size)"
        ) from exc


def trainable_count(model: Any) -> int:
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
