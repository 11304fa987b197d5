"""validate_model: layers that mix examples (BatchNorm) are refused, per-example normalisation
is not."""

from __future__ import annotations

import pytest

from covidct.errors import CovidCTError
from covidct.models import (
    ModelValidationError,
    validate_model,
)
from covidct.tfsetup import keras


def _with_batchnorm(layer: keras.layers.Layer) -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = layer(x)
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(x)), name="net")


@pytest.mark.parametrize(
    "layer",
    [
        keras.layers.BatchNormalization(name="bn_here"),
        keras.layers.experimental.SyncBatchNormalization(name="bn_here"),
    ],
    ids=["BatchNormalization", "SyncBatchNormalization"],
)
def test_validate_model_rejects_batchnorm_naming_the_layer_and_groupnorm(
    layer: keras.layers.Layer,
) -> None:
    with pytest.raises(ModelValidationError) as err:
        validate_model(_with_batchnorm(layer))
    message = str(err.value)
    assert "bn_here" in message
    assert "GroupNormalization" in message


def test_validate_model_finds_batchnorm_nested_in_a_sub_model() -> None:
    inner = keras.Sequential(
        [keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(name="deep_bn")],
        name="encoder",
    )
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(inner(inputs)))
    model = keras.Model(inputs, outputs, name="outer")
    with pytest.raises(ModelValidationError, match=r"outer/encoder/deep_bn"):
        validate_model(model)


def test_validate_model_accepts_per_example_normalisation() -> None:
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.GroupNormalization(groups=2)(inputs)
    x = keras.layers.LayerNormalization()(x)
    validate_model(keras.Model(inputs, x))


def test_model_validation_error_is_a_covidct_error() -> None:
    assert issubclass(ModelValidationError, CovidCTError)
