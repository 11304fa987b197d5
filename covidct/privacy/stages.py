"""Pipeline stages as clipping groups (the paper's extension for pipeline-parallel models).

A pipelined model runs consecutive layers on different processors; no stage sees the whole
gradient, so a global norm cannot be taken. Per-stage clipping needs none: each stage clips its
own parameters' part of a unit's gradient to C_s, with sum_s C_s^2 = C^2, so the whole unit
still moves the sum by at most C and the accounting is unchanged (Lee et al. 2021, NanoBatch
Privacy, section on pipelining; McMahan et al. 2018 for per-layer clipping).

Here a stage is a run of consecutive layers; ``stage_groups`` returns each stage's indices into
``model.trainable_variables`` for ``DPGradient(layer_groups=...)``.
"""

from __future__ import annotations

from covidct.privacy.per_unit import layer_groups
from covidct.tfsetup import keras


class StageError(ValueError):
    """The model cannot be split into the requested number of stages."""


def stage_groups(model: keras.Model, n_stages: int) -> list[list[int]]:
    """Split the layers that own trainable variables into ``n_stages`` consecutive stages.

    Stage boundaries fall where the running parameter count crosses k/n of the total, so the
    stages carry similar numbers of parameters (what balances a pipeline); every stage has at
    least one layer.

    Args:
        model: the Keras model.
        n_stages: number of stages (>= 1).

    Returns:
        For each stage, the indices into ``model.trainable_variables`` of its variables.

    Raises:
        StageError: fewer layers with parameters than stages, or n_stages < 1.
    """
    variables = list(model.trainable_variables)
    layers = layer_groups(model, variables)
    if n_stages < 1:
        raise StageError(f"pipeline stages must be >= 1, got {n_stages}")
    if n_stages > len(layers):
        raise StageError(
            f"{model.name} has {len(layers)} layers with parameters, too few for {n_stages} "
            "pipeline stages: ask for fewer stages"
        )
    sizes = [sum(int(variables[i].shape.num_elements() or 0) for i in g) for g in layers]
    total = float(sum(sizes))
    stages: list[list[int]] = [[] for _ in range(n_stages)]
    done, prev, n_layers = 0.0, -1, len(layers)
    for j, (members, size) in enumerate(zip(layers, sizes, strict=True)):
        share = int(n_stages * (done + size / 2) / total) if total else 0
        # never skip a stage, and leave at least one layer for each later stage
        stage = min(max(share, prev, n_stages - (n_layers - j)), prev + 1, n_stages - 1)
        stages[stage].extend(members)
        done, prev = done + size, stage
    return stages
