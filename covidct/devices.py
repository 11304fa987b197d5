"""Choose where training runs: a Graphcore IPU, GPUs, the CPU, or several workers — and say why.

One device: OneDeviceStrategy. Several local GPUs (or logical CPU devices): MirroredStrategy.
Several workers (``--workers host:port,... --worker-index I`` or ``TF_CONFIG``):
MultiWorkerMirroredStrategy. With several replicas, ``DPGradient`` all-reduces the clipped sums
and draws the noise once (``covidct.distributed`` splits each step's sample across replicas).

The IPU path is written against Graphcore's documented TensorFlow API (``tensorflow.python.ipu``:
``IPUConfig``, ``IPUStrategy``) and is selected only when Graphcore's TensorFlow is importable.
It has NOT been exercised here: no IPU hardware or Graphcore wheel is available to this project.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from covidct.privacy.modes import ExecutionMode
from covidct.tfsetup import quiet_stderr, tf

logger = logging.getLogger(__name__)


@dataclass
class DeviceChoice:
    kind: str  # "ipu", "gpu" or "cpu"
    reason: str
    strategy: Any  # a tf.distribute strategy; its scope() holds the model and optimizer
    num_replicas: int = 1  # replicas in the whole cluster (strategy.num_replicas_in_sync)
    replica_ids: tuple[int, ...] = (0,)  # global ids of this process's replicas
    worker_index: int = 0  # this process among the workers (0: the chief)
    num_workers: int = 1

    @property
    def is_chief(self) -> bool:
        """Worker 0 writes the run's files; the other workers only train."""
        return self.worker_index == 0

    @property
    def jit_compile(self) -> bool:
        """Graphcore's TensorFlow compiles IPU functions with XLA (``jit_compile=True``)."""
        return self.kind == "ipu"

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a tf.function on the device: through ``strategy.run`` on the IPU (Graphcore's
        documented pattern) and with several replicas (once per replica), directly elsewhere
        (the strategy's scope places the variables)."""
        if self.kind == "ipu" or self.num_replicas > 1:
            return self.strategy.run(fn, args=args)
        return fn(*args)

    def all_agree(self, ok: bool) -> bool:
        """True when every worker passes ``ok=True`` (a collective: every worker must call it).

        Lets worker 0 stop the others when it refuses a run (budget, existing folder) instead of
        leaving them waiting in the first all-reduce. One worker: returns ``ok``.
        """
        if self.num_workers == 1:
            return ok
        flags = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(1.0 if ok else 0.0)
        )
        total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None)
        return bool(float(total) >= self.num_replicas)

    def broadcast_from_chief(self, values: Any) -> Any:
        """Replica 0's ``values`` (a float32 vector) on every worker (a collective: every
        worker must call it). Goes over the strategy's own all-reduce (replica 0 contributes
        its values, every other replica zeros), so nothing passes through the command line,
        ``TF_CONFIG`` or a file. One worker: ``values`` unchanged.
        """
        import numpy as np

        if self.num_workers == 1:
            return values
        mine = tf.constant(np.asarray(values, np.float32))
        parts = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: mine if ctx.replica_id_in_sync_group == 0 else tf.zeros_like(mine)
        )
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, parts, axis=None).numpy()

    def describe(self) -> str:
        return f"{self.kind.upper()}: {self.reason}"


def _graphcore_available() -> bool:
    try:
        return importlib.util.find_spec("tensorflow.python.ipu") is not None
    except (ImportError, ValueError):
        return False


def split_cpu(n: int) -> None:
    """Make the CPU n logical devices (for data-parallel tests on one machine).

    Raises:
        RuntimeError: TensorFlow has already initialised its devices in this process.
    """
    cpus = tf.config.list_physical_devices("CPU")
    if len(tf.config.get_logical_device_configuration(cpus[0]) or [None]) == n:
        return  # already split (listing logical devices here would initialise them)
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
    )


def choose_device(
    *,
    prefer: str = "auto",
    local_devices: int = 1,
    workers: str | Sequence[str] | None = None,
    worker_index: int | None = None,
    ipus: int = 1,
) -> DeviceChoice:
    """Pick the device: IPU if Graphcore's TensorFlow is present, else a GPU, else the CPU.

    Call it before any other TensorFlow op of the process (MultiWorkerMirroredStrategy and
    logical CPU devices must be set up first).

    Args:
        prefer: "auto", or force "cpu" / "gpu" / "ipu".
        local_devices: replicas on this machine: 1 (default: one device), n > 1 (a
            MirroredStrategy over n GPUs, or over n logical CPU devices), or 0 for every GPU.
            Ignored with several workers (each uses all its GPUs, or its CPU).
        workers: "host:port,host:port": train on these workers (MultiWorkerMirroredStrategy);
            this process is ``worker_index``. Default: the cluster of ``TF_CONFIG``, if any.
        worker_index: this process's index in ``workers``.
        ipus: IPUs to select on an IPU system: one per pipeline stage when the model is
            pipelined (``covidct.ipu.pipeline``), else 1.
    """
    from covidct.distributed import cluster_from_env, set_tf_config

    if workers is not None:
        if worker_index is None:
            raise ValueError("--workers needs --worker-index")
        set_tf_config(workers, worker_index)
    cluster = cluster_from_env()
    if cluster is not None and prefer != "ipu":
        return _multi_worker(prefer, cluster.index, len(cluster.workers))
    if prefer in ("auto", "ipu") and _graphcore_available():
        from tensorflow.python import ipu  # Graphcore's TensorFlow only

        if ipus < 1:
            raise ValueError(f"ipus must be >= 1, got {ipus}")
        cfg = ipu.config.IPUConfig()
        cfg.auto_select_ipus = ipus
        cfg.configure_ipu_system()
        return DeviceChoice(
            "ipu",
            f"Graphcore TensorFlow found; {ipus} IPU{'s' if ipus > 1 else ''} selected",
            ipu.ipu_strategy.IPUStrategy(),
        )
    if prefer == "ipu":
        logger.warning("IPU requested but Graphcore's TensorFlow is not installed")
    if local_devices < 0:
        raise ValueError(f"local_devices must be >= 0, got {local_devices}")
    with quiet_stderr():  # the CUDA probe prints cuInit errors on machines without a GPU
        gpus = tf.config.list_physical_devices("GPU")
    if prefer in ("auto", "gpu") and gpus:
        n = len(gpus) if local_devices == 0 else local_devices
        if n > len(gpus):
            raise ValueError(f"{n} GPUs requested, {len(gpus)} visible")
        if n == 1:
            return DeviceChoice(
                "gpu",
                f"{len(gpus)} GPU(s) visible; training on /GPU:0",
                tf.distribute.OneDeviceStrategy("/GPU:0"),
            )
        return _mirrored("gpu", [f"/GPU:{i}" for i in range(n)], f"{len(gpus)} GPU(s) visible")
    reason = "no IPU or GPU found" if prefer == "auto" else f"{prefer} requested or unavailable"
    if local_devices > 1:
        try:
            split_cpu(local_devices)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{local_devices} CPU replicas need logical CPU devices, set up before "
                f"TensorFlow initialises ({exc}): call choose_device first"
            ) from exc
        return _mirrored("cpu", [f"/CPU:{i}" for i in range(local_devices)], reason)
    return DeviceChoice("cpu", reason, tf.distribute.OneDeviceStrategy("/CPU:0"))


def _mirrored(kind: str, devices: list[str], reason: str) -> DeviceChoice:
    strategy = tf.distribute.MirroredStrategy(devices)
    n = int(strategy.num_replicas_in_sync)
    return DeviceChoice(
        kind,
        f"{reason}; data-parallel on {n} replicas ({', '.join(devices)})",
        strategy,
        num_replicas=n,
        replica_ids=tuple(range(n)),
    )


def _multi_worker(prefer: str, index: int, n_workers: int) -> DeviceChoice:
    """MultiWorkerMirroredStrategy over the workers of TF_CONFIG (each: all its GPUs, or its
    CPU)."""
    with quiet_stderr():
        gpus = tf.config.list_physical_devices("GPU") if prefer != "cpu" else []
    if prefer == "cpu":
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.set_visible_devices([], "GPU")
    comm = tf.distribute.experimental.CommunicationImplementation
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=comm.NCCL if gpus else comm.RING
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    n = int(strategy.num_replicas_in_sync)
    ids = strategy.experimental_local_results(
        strategy.experimental_distribute_values_from_function(
            lambda ctx: ctx.replica_id_in_sync_group
        )
    )
    kind = "gpu" if gpus else "cpu"
    return DeviceChoice(
        kind,
        f"worker {index} of {n_workers}; data-parallel on {n} replicas "
        f"({len(ids)} {kind.upper()} replica(s) here)",
        strategy,
        num_replicas=n,
        replica_ids=tuple(int(i) for i in ids),
        worker_index=index,
        num_workers=n_workers,
    )


def resolve_execution(mode: ExecutionMode, device_kind: str) -> ExecutionMode:
    """AUTO: nanobatch on the IPU (what the paper measured fastest there), else vectorized
    (faster per example on CPU in benchmarks/bench_dp_step.py)."""
    if mode is not ExecutionMode.AUTO:
        return mode
    return ExecutionMode.NANOBATCH if device_kind == "ipu" else ExecutionMode.VECTORIZED
