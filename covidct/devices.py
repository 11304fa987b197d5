"""Choose where training runs: a Graphcore IPU, GPUs, or the CPU — and say why.

The IPU path is written against Graphcore's documented TensorFlow API (``tensorflow.python.ipu``:
``IPUConfig``, ``IPUStrategy``) and is selected only when Graphcore's TensorFlow is importable.
It has NOT been exercised here: no IPU hardware or Graphcore wheel is available to this project.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from covidct.tfsetup import quiet_stderr, tf

logger = logging.getLogger(__name__)


@dataclass
class DeviceChoice:
    kind: str  # "ipu", "gpu" or "cpu"
    reason: str
    strategy: Any  # a tf.distribute strategy; its scope() holds the model and optimizer

    @property
    def jit_compile(self) -> bool:
        """Graphcore's TensorFlow compiles IPU functions with XLA (``jit_compile=True``)."""
        return self.kind == "ipu"

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a tf.function on the device: through ``strategy.run`` on the IPU (Graphcore's
        documented pattern), directly elsewhere (the strategy's scope places the variables)."""
        if self.kind == "ipu":
            return self.strategy.run(fn, args=args)
        return fn(*args)

    def describe(self) -> str:
        return f"{self.kind.upper()}: {self.reason}"


def _graphcore_available() -> bool:
    try:
        return importlib.util.find_spec("tensorflow.python.ipu") is not None
    except (ImportError, ValueError):
        return False


def choose_device(*, prefer: str = "auto") -> DeviceChoice:
    """Pick the device: IPU if Graphcore's TensorFlow is present, else a GPU, else the CPU.

    Args:
        prefer: "auto", or force "cpu" / "gpu" / "ipu".
    """
    if prefer in ("auto", "ipu") and _graphcore_available():
        from tensorflow.python import ipu  # Graphcore's TensorFlow only

        cfg = ipu.config.IPUConfig()
        cfg.auto_select_ipus = 1
        cfg.configure_ipu_system()
        return DeviceChoice(
            "ipu", "Graphcore TensorFlow found; 1 IPU selected", ipu.ipu_strategy.IPUStrategy()
        )
    if prefer == "ipu":
        logger.warning("IPU requested but Graphcore's TensorFlow is not installed")
    with quiet_stderr():  # the CUDA probe prints cuInit errors on machines without a GPU
        gpus = tf.config.list_physical_devices("GPU")
    if prefer in ("auto", "gpu") and gpus:
        # One device per process: replicas would each need their own share of the noise-free
        # sum and one noise draw overall; multi-replica DP training is a separate mode.
        return DeviceChoice(
            "gpu",
            f"{len(gpus)} GPU(s) visible; training on /GPU:0",
            tf.distribute.OneDeviceStrategy("/GPU:0"),
        )
    reason = "no IPU or GPU found" if prefer == "auto" else f"{prefer} requested or unavailable"
    return DeviceChoice("cpu", reason, tf.distribute.OneDeviceStrategy("/CPU:0"))
