"""What one training attempt works with (``Job``), where it runs (``Placement``) and what it
returns (``RunResult``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidct.data.units import Units
from covidct.privacy.plan import PrivacyPlan
from covidct.public_start import PublicStart
from covidct.train_config import TrainConfig
from covidct.training.checks import pipeline_ipus


@dataclass
class RunResult:
    run_dir: Path
    privacy: Any  # covidct.privacy.report.PrivacyReport (None on a worker other than 0)
    metrics: dict[str, Any]
    device: str
    execution: str
    seconds: float
    chief: bool = True  # False: a worker that only trained (worker 0 wrote the run)


@dataclass(frozen=True)
class Placement:
    """Where training runs: one device (default), several local ones, or several workers.

    Attributes:
        local_devices: replicas on this machine (MirroredStrategy over that many GPUs, or
            logical CPU devices); 0 = every GPU; ignored with several workers.
        workers: "host:port,host:port" (MultiWorkerMirroredStrategy); None: TF_CONFIG if set.
        worker_index: this process's index in ``workers`` (0 is the chief, which writes the run).
    """

    local_devices: int = 1
    workers: str | None = None
    worker_index: int | None = None

    def choose(self, config: TrainConfig, *, private: bool = True) -> Any:
        """The DeviceChoice; call before any other TensorFlow op of the process."""
        from covidct.config import ConfigError
        from covidct.devices import choose_device

        try:
            return choose_device(
                prefer=config.device,
                local_devices=self.local_devices,
                workers=self.workers,
                worker_index=self.worker_index,
                ipus=pipeline_ipus(config) if private else 1,
            )
        except ValueError as exc:
            raise ConfigError(f"cannot place training: {exc}") from exc


@dataclass
class Job:
    """Everything a training attempt needs, whether it starts a run or resumes one."""

    prep: Path
    config: TrainConfig
    plan: PrivacyPlan
    run: Path
    run_id: str
    train_units: Units
    val: Units
    test: Units
    say: Callable[[str], None]
    progress: bool
    t0: float
    start: PublicStart | None = None  # public starting weights (train.initial_weights)
