"""The training loop: sample, load, one DP step, the EMA; validate each epoch, keep the best
weights, checkpoint. Its state is explicit (``Loop``), checkpointed as ``LoopState``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from covidct import checkpoint
from covidct.data.units import PoissonSampler, ShuffledSampler
from covidct.distributed import replica_chunks, store_loader
from covidct.ema import Ema
from covidct.evaluate import auc_or_nan, predict
from covidct.privacy.accounting import Sampling
from covidct.training.job import Job


class Loop:
    """The training loop and all its state, explicit: the weights and the optimizer, the
    best-so-far weights, the EMA, the steps counted for the accountant, and ``state`` (the
    checkpointed ``LoopState``: next step, history, early stopping)."""

    def __init__(
        self,
        job: Job,
        device: Any,
        model: Any,
        optimizer: Any,
        dp: Any,
        store: Any,
        secret: Any,
        *,
        counted: int,
    ) -> None:
        config, plan = job.config, job.plan
        self.job, self.device, self.model = job, device, model
        self.optimizer, self.dp = optimizer, dp
        self.store = store
        self.counted = counted  # every started step, for the accountant
        self.state = checkpoint.LoopState()
        self.best_weights = model.get_weights()
        # the exponential moving average of the weights (De et al. 2022): post-processing of
        # the noisy iterates, so it costs no privacy; validation, the best epoch and the saved
        # model use it
        self.ema = Ema(config.ema, model.get_weights())
        self.sampler: PoissonSampler | ShuffledSampler = (
            PoissonSampler(len(job.train_units), sampling_rate=plan.sampling_rate, secret=secret)
            if config.sampling is Sampling.POISSON
            else ShuffledSampler(len(job.train_units), batch_size=config.batch_size, secret=secret)
        )
        self.planned_eps = plan.epsilon_per_epoch()

    def restore(self, saved: checkpoint.SavedState) -> None:
        self.model.set_weights(saved.weights)
        for var, value in zip(self.optimizer.variables, saved.optimizer, strict=True):
            var.assign(value)
        self.ema.restore(saved.ema, self.model.get_weights())
        self.best_weights, self.state = saved.best_weights, saved.loop
        self.state.attempts += 1

    def run(self, stop_at: int) -> None:
        """Steps until ``stop_at`` (or an early stop); then the weights to save are in place."""
        job, state, config = self.job, self.state, self.job.config
        first, spe = state.next_step, job.plan.steps_per_epoch
        if not state.done:  # what this attempt sets out to take counts, even if it stops early
            state.committed = self.counted + (stop_at - first)
        bar = progress_bar(job.plan.steps, job.progress, initial=first)
        # reading the sums is a collective across workers: the loss display is one process's
        show_loss = bar is not None and self.device.num_workers == 1
        losses: list[float] = []
        step = first
        while step < stop_at and not state.done:
            loss = self.step(step, read_loss=show_loss)
            if loss is not None:
                losses.append(loss)
            step += 1
            state.next_step = step
            if bar is not None:
                bar.update(1)
                # the training loss is computed on private data without noise: console only,
                # never written to the run (it is not covered by the guarantee)
                last_eps = state.history[-1]["epsilon"] if state.history else 0.0
                mean = sum(losses) / max(len(losses), 1)
                bar.set_postfix(loss=f"{mean:.3f}", eps=f"{last_eps:.2f}")
            if step % spe == 0:
                self.end_epoch(step // spe)
                losses = []
                self.save_checkpoint()
            elif config.checkpoint_every and (step - first) % config.checkpoint_every == 0:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if step % spe and not state.done:  # stopped inside an epoch (a resume stopped early)
            self.end_epoch(len(state.history) + 1)
        state.done = True
        self.save_checkpoint()  # a crash while finishing resumes straight to finishing
        if config.restore_best:
            self.model.set_weights(self.best_weights)
        else:
            self.ema.swap_in(self.model)  # the last epoch's averaged weights

    def step(self, step: int, *, read_loss: bool) -> float | None:
        """One noisy update on the sample of ``step``."""
        job, config, device = self.job, self.job.config, self.device
        # counted BEFORE the noisy update exists: a crash from here on leaves the step counted
        self.counted += 1
        if device.is_chief:
            checkpoint.count_step(job.run, self.counted)
        chosen = self.sampler.sample(step)  # the same global sample on every worker
        load, shape = store_loader(
            job.train_units,
            chosen,
            self.store,
            k=config.max_slices_per_unit,
            rng=slice_rng(config.seed, step),
            augment=config.augment,
            views=config.augment_views,
        )
        rounds = replica_chunks(
            chosen,
            load,
            chunk=config.chunk_units,
            num_replicas=device.num_replicas,
            replica_ids=device.replica_ids,
            shape=shape,
        )
        loss = self.dp.run_batch(rounds, self.optimizer, step=step, read_loss=read_loss)
        self.ema.update(self.model)
        return loss  # type: ignore[no-any-return]

    def end_epoch(self, epoch: int) -> None:
        """Validate after ``epoch`` (1-based), keep the best weights, decide early stopping."""
        job, config, state, plan = self.job, self.job.config, self.state, self.job.plan
        live = self.ema.swap_in(self.model)
        val_pred = predict(self.model, job.val, self.store)
        _, v_labels, v_scores = val_pred.by_patient(config.patient_score)
        val_auc = auc_or_nan(v_labels, v_scores)
        # epsilon over every step counted so far (repeated steps included)
        eps = (
            self.planned_eps[epoch - 1]
            if self.counted == epoch * plan.steps_per_epoch and epoch <= len(self.planned_eps)
            else plan.epsilon(self.counted)
        )
        state.history.append(
            {
                "epoch": epoch,
                "steps": self.counted,
                "epsilon": eps,
                "validation_patient_auc": val_auc,
            }
        )
        every = max(1, config.epochs // 20)  # at most ~20 lines (full batch: an epoch = a step)
        if epoch % every == 0 or epoch in (1, config.epochs):
            job.say(
                f"epoch {epoch}/{config.epochs}: epsilon spent {eps:.3f}, "
                f"validation patient AUC {val_auc:.3f}"
            )
        if not (val_auc <= state.best_auc):  # NaN-safe: a NaN AUC never counts as improvement
            state.best_auc, self.best_weights, state.bad_epochs = (
                val_auc,
                self.model.get_weights(),
                0,
            )
        else:
            state.bad_epochs += 1
            patience = config.early_stopping_patience
            if patience and state.bad_epochs >= patience:
                job.say(
                    f"early stop after epoch {epoch}: no validation improvement (epsilon still "
                    "counts every planned step: the stopping rule is not part of the mechanism)"
                )
                state.done = True
        self.ema.swap_out(self.model, live)

    def save_checkpoint(self) -> None:
        if not self.device.is_chief:
            return
        checkpoint.save_state(
            self.job.run,
            weights=self.model.get_weights(),
            optimizer=[v.numpy() for v in self.optimizer.variables],
            best_weights=self.best_weights,
            loop=self.state,
            ema=self.ema.state(),
        )


def slice_rng(seed: int, step: int) -> np.random.Generator:
    """Which k slices each sampled patient contributes at ``step``: a pure function of
    (seed, step), so a resumed run draws what the uninterrupted run would have drawn."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7, step)))


def progress_bar(total: int, enabled: bool, *, initial: int = 0) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="step")
