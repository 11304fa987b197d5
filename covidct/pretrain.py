"""``covidct pretrain``: train WITHOUT differential privacy on data declared public, then export
the weights with their provenance (``covidct.public_start``) for private runs to start from."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from covidct.public_start import PublicStart, export
from covidct.train_config import TrainConfig

__all__ = ["pretrain"]


def pretrain(
    public_prep: Path,
    *,
    out: Path,
    config: TrainConfig,
    runs_dir: Path,
    run_id: str | None = None,
    resolved_config: dict[str, Any] | None = None,
    progress: bool = False,
    on_event: Callable[[str], None] | None = None,
) -> tuple[Any, PublicStart]:
    """Train ``config``'s model without DP on ``public_prep`` and export its weights to ``out``.

    The run folder (``runs_dir/run_id``) is an ordinary non-private run: its metrics are the
    public test split's.
    """
    from covidct.train import train

    say = on_event or (lambda msg: None)
    say(
        f"covidct pretrain trains WITHOUT differential privacy on {public_prep}: use it only for "
        "data that needs no protection (the weights' provenance records it as public)"
    )
    config = replace(config, initial_weights="")
    result = train(
        public_prep,
        config=config,
        target_epsilon=math.inf,
        runs_dir=runs_dir,
        run_id=run_id,
        resolved_config=resolved_config,
        progress=progress,
        on_event=say,
    )
    return result, export(result.run_dir, public_prep, out, config=config)
