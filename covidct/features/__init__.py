"""Fixed, data-independent slice features and their per-PREP cache.

Importing this package registers ``ScatteringMaps`` with Keras, so a saved scattering model loads
with ``keras.models.load_model`` (see ``covidct.features.scattering``).
"""

from covidct.features.scattering import ScatteringMaps, ScatteringSpec

__all__ = ["ScatteringMaps", "ScatteringSpec"]
