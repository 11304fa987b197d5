"""Fixed, data-independent slice features and their per-PREP cache.

Importing this package registers the transforms' Keras layers (``ScatteringMaps``,
``AttenuationMaps``, ``AttenuationPool``), so a saved feature model loads with
``keras.models.load_model`` (see ``covidct.features.transform``).
"""

from covidct.features.attenuation import AttenuationMaps, AttenuationPool, AttenuationSpec
from covidct.features.scattering import ScatteringMaps, ScatteringSpec
from covidct.features.transform import FixedTransform

__all__ = [
    "AttenuationMaps",
    "AttenuationPool",
    "AttenuationSpec",
    "FixedTransform",
    "ScatteringMaps",
    "ScatteringSpec",
    "from_record",
]


def from_record(record: dict[str, object]) -> FixedTransform:
    """The transform a run's ``run.json`` ``features`` record describes."""
    for cls in (ScatteringSpec, AttenuationSpec):
        if record.get("transform") == cls.transform_id:
            return cls.from_record(record)
    raise ValueError(f"unknown feature transform {record.get('transform')!r}")
