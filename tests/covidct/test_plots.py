"""The sweep's three figures: drawn for a full grid and for the edge cases a sweep can leave
(only the baseline finished; batch "all" that has no place on a log axis)."""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image

from covidct.plots import sweep_plots
from covidct.runs import Run, SweepFolder


def _row(run_id: str, eps: float, batch: int, auc: float | None, seed: int = 0) -> dict:
    return {
        "run_id": run_id,
        "epsilon_target": eps,
        "batch_size": batch,
        "seed": seed,
        "patient_auc": auc,
    }


def _history(runs: Path, run_id: str, epsilons: list[float]) -> None:
    Run(runs / run_id).path.mkdir(parents=True)
    Run(runs / run_id).write_json(
        Run.HISTORY, [{"epoch": i + 1, "epsilon": e} for i, e in enumerate(epsilons)]
    )


def _images(figures: dict[str, bytes]) -> list[Image.Image]:
    assert list(figures) == list(SweepFolder.FIGURES)
    return [Image.open(io.BytesIO(png)) for png in figures.values()]


def test_a_grid_of_points_and_the_baseline_gives_three_pngs(tmp_path: Path):
    rows = [
        _row("a", 1.0, 8, 0.7),
        _row("b", 3.0, 8, 0.8),
        _row("c", 3.0, 16, 0.75),
        _row("d", 3.0, 8, 0.82, seed=1),
        _row("e", math.inf, 8, 0.9),
        _row("f", 8.0, 0, None),  # a point whose AUC is undefined (one class in test)
    ]
    for run_id, eps in (("a", [0.5, 1.0]), ("b", [1.5, 3.0]), ("c", [2.0, 3.0]), ("f", [8.0])):
        _history(tmp_path, run_id, eps)
    for image in _images(sweep_plots(rows, tmp_path)):
        assert image.format == "PNG" and image.size[0] > 300


def test_a_sweep_with_only_its_baseline_still_draws_every_figure(tmp_path: Path):
    for image in _images(sweep_plots([_row("e", math.inf, 8, 0.9)], tmp_path)):
        assert image.format == "PNG"
