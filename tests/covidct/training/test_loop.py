"""The training loop on its own (a stand-in DP step, a real plan and real data): every step is
counted before its update exists, each epoch is validated and checkpointed, early stopping
still counts the planned steps, and the slices drawn are a pure function of (seed, step)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from covidct import checkpoint
from covidct.data.units import PrivacyUnit, SliceStore, load_units
from covidct.privacy.plan import plan_privacy
from covidct.privacy.secret import RunSecret
from covidct.runs import create_run_dir
from covidct.tfsetup import keras
from covidct.train_config import TrainConfig
from covidct.training.job import Job
from covidct.training.loop import Loop, slice_rng

CONFIG = TrainConfig(epochs=3, batch_size=8, max_slices_per_unit=2, chunk_units=8, ema=0.0)
ONE_DEVICE = SimpleNamespace(num_workers=1, is_chief=True, num_replicas=1, replica_ids=(0,))


class StandInStep:
    """Records, at each update, how many steps the run folder had counted; moves the weights."""

    def __init__(self, job: Job, model, drift: float) -> None:
        self.job, self.model, self.drift, self.seen = job, model, drift, []

    def run_batch(self, rounds, optimizer, *, step: int, read_loss: bool):
        self.seen.append((step, checkpoint.steps_counted(self.job.run)))
        self.model.set_weights([w + self.drift for w in self.model.get_weights()])


def _loop(prep: Path, tmp_path: Path, config: TrainConfig, drift: float) -> tuple[Loop, list[str]]:
    said: list[str] = []
    units = {s: load_units(prep, s, PrivacyUnit.PATIENT) for s in ("train", "validation", "test")}
    plan = plan_privacy(n_units=len(units["train"]), config=config, target_epsilon=3.0)
    job = Job(
        prep=prep,
        config=config,
        plan=plan,
        run=create_run_dir(tmp_path, "r"),
        run_id="r",
        train_units=units["train"],
        val=units["validation"],
        test=units["test"],
        say=said.append,
        progress=False,
        t0=0.0,
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((32, 32, 1)), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    dp = StandInStep(job, model, drift)
    loop = Loop(
        job,
        ONE_DEVICE,
        model,
        keras.optimizers.SGD(),
        dp,
        SliceStore(prep),
        RunSecret.draw(),
        counted=0,
    )
    return loop, said


def test_every_step_is_counted_before_its_update_and_every_epoch_is_validated(prep, tmp_path):
    loop, said = _loop(prep, tmp_path, CONFIG, drift=0.001)
    plan = loop.job.plan
    loop.run(plan.steps)
    assert loop.dp.seen == [(s, s + 1) for s in range(plan.steps)]
    assert [h["epoch"] for h in loop.state.history] == [1, 2, 3]
    assert [h["epsilon"] for h in loop.state.history] == plan.epsilon_per_epoch()
    assert loop.state.history[-1]["epsilon"] <= 3.0
    saved = checkpoint.load_state(loop.job.run)
    assert saved is not None and saved.loop.done and saved.loop.next_step == plan.steps
    assert any("epoch 3/3" in line for line in said)


def test_an_early_stop_ends_training_but_the_planned_steps_still_count(prep, tmp_path):
    config = replace(CONFIG, epochs=6, early_stopping_patience=1)
    loop, said = _loop(prep, tmp_path, config, drift=0.0)  # validation never improves
    plan = loop.job.plan
    loop.run(plan.steps)
    assert len(loop.state.history) == 2 and loop.state.done  # epoch 2 did not improve on 1
    assert loop.counted == 2 * plan.steps_per_epoch < plan.steps
    assert loop.state.committed == plan.steps  # what epsilon must count
    assert any("early stop after epoch 2" in line for line in said)


def test_the_slices_drawn_depend_on_seed_and_step_only():
    a = slice_rng(3, 10).integers(0, 1000, 5)
    assert np.array_equal(a, slice_rng(3, 10).integers(0, 1000, 5))
    assert not np.array_equal(a, slice_rng(3, 11).integers(0, 1000, 5))
    assert not np.array_equal(a, slice_rng(4, 10).integers(0, 1000, 5))
