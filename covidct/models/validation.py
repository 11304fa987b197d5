"""Reject layers that mix examples within a batch: they break per-unit (per-patient) privacy.

DP-SGD bounds each privacy unit's influence by clipping that unit's gradient. A layer whose
output for one example depends on the other examples of the batch (BatchNormalization's batch
statistics) lets one patient's data reach every other unit's gradient, so the per-unit clip no
longer bounds that patient's contribution and the privacy guarantee is void (Opacus rejects such
layers for the same reason: ``opacus.validators.module_validator``). GroupNormalization and
LayerNormalization normalise each example on its own and are safe.
"""

from __future__ import annotations

from collections.abc import Iterator

from covidct.errors import CovidCTError
from covidct.tfsetup import keras

__all__ = ["ModelValidationError", "validate_model"]


class ModelValidationError(CovidCTError):
    """A model contains a layer that DP-SGD cannot train with a per-unit guarantee."""


# Matched by class name anywhere in the MRO so that every variant is caught: tf-keras's
# BatchNormalization and SyncBatchNormalization, tf.compat.v1.layers.BatchNormalization, and
# user subclasses of any of them.
_BATCH_MIXING = ("BatchNormalization",)


def _mixes_examples(layer: object) -> str | None:
    """The offending base-class name when ``layer`` mixes examples, else None."""
    for cls in type(layer).__mro__:
        if any(name in cls.__name__ for name in _BATCH_MIXING):
            return cls.__name__
    return None


def _walk(layer: keras.layers.Layer, path: str) -> Iterator[tuple[str, keras.layers.Layer]]:
    """Yield ``(path, layer)`` for ``layer`` and every layer nested in it, depth first.

    Paths name nested sub-models (``"encoder/block1/bn"``) so that a message can point at the
    exact layer. Models are entered through ``.layers``, wrappers (TimeDistributed,
    Bidirectional) through ``.layer``.
    """
    yield path, layer
    children: list[keras.layers.Layer] = []
    if isinstance(layer, keras.Model):
        children = list(layer.layers)
    elif isinstance(layer, keras.layers.Wrapper):
        children = [layer.layer]
    for child in children:
        yield from _walk(child, f"{path}/{child.name}")


def validate_model(model: keras.Model) -> None:
    """Raise if any layer of ``model`` (nested sub-models included) mixes examples in a batch.

    Args:
        model: a built or unbuilt Keras model.

    Raises:
        ModelValidationError: naming the first offending layer and its replacement.
    """
    seen: set[int] = set()
    found: list[tuple[str, str]] = []
    for path, layer in _walk(model, model.name):
        seen.add(id(layer))
        kind = _mixes_examples(layer)
        if kind is not None:
            found.append((path, kind))
    # Layers held as attributes of custom layers are not in ``.layers``; tf.Module tracking
    # still finds them, without a path.
    for module in model.submodules:
        if id(module) not in seen:
            kind = _mixes_examples(module)
            if kind is not None:
                found.append((getattr(module, "name", type(module).__name__), kind))
    if found:
        where = ", ".join(f"'{path}' ({kind})" for path, kind in found)
        raise ModelValidationError(
            f"model '{model.name}' has layers that mix examples within a batch: {where}. "
            "Batch statistics let one patient's data reach every other patient's gradient, so "
            "per-patient clipping would not bound it and DP-SGD would give no guarantee. "
            "Replace each with keras.layers.GroupNormalization (or LayerNormalization), "
            "which normalises every example on its own."
        )
