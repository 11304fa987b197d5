"""The DP step on one or several replicas: ``DPGradient`` keeps the logical batch's sums,
lets an engine (``covidct.privacy.engines``) add each chunk's clipped per-unit gradients, and
adds the noise once (``mechanism.noisy_mean``) when it applies the update. It implements
``mechanism.DPStep``; the pipelined IPU step (``covidct.ipu.pipeline``) implements it too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

from covidct.privacy.engines import make_engine, replicated
from covidct.privacy.mechanism import Clipper, DPSettings, noisy_mean
from covidct.privacy.modes import ExecutionMode, UnitLoss
from covidct.privacy.per_unit import layer_groups as per_layer_groups
from covidct.privacy.secret import RunSecret
from covidct.tfsetup import keras, tf

__all__ = ["DPGradient"]


class DPGradient:
    """Clipped, accumulated, once-noised gradients of a Keras model.

    Usage per logical batch::

        dp.reset()
        for x, mask, y, present in chunks:   # fixed chunk shape; padded units have present=0
            dp.accumulate(x, mask, y, present)
        dp.apply(optimizer, step=step)       # noised once, divided by q*N, applied

    or ``dp.run_batch(rounds, optimizer, step=step)``, which does the same and launches the
    last chunk and the update as one graph (the training loop uses it).

    Built under the scope of a strategy with R > 1 replicas (MirroredStrategy,
    MultiWorkerMirroredStrategy), each replica clips and sums its own units
    (``accumulate_replicas``: one chunk per replica of this worker, e.g. from
    ``covidct.distributed.replica_chunks``); ``apply`` all-reduces the R sums by SUM with the
    noise added on replica 0 only, so the update is (sum + ONE draw of N(0, sigma^2 C^2)) / (q N),
    exactly as with one replica. Reading ``units_in_batch``, ``mean_unit_loss``,
    ``clipped_sum`` or ``result`` sums over all replicas; under MultiWorkerMirroredStrategy
    that is a collective, so every worker must read together (or none).
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        settings: DPSettings,
        mode: ExecutionMode,
        secret: RunSecret,
        layer_groups: Sequence[Sequence[int]] | None = None,
        vectorized_impl: str | None = None,
        jit_compile: bool = False,
        runner: Callable[..., object] | None = None,
        unit_loss: UnitLoss = UnitLoss.MEAN,
    ) -> None:
        """Build the graph functions.

        Args:
            model: maps (n, H, W, 1) images to (n, 1) logits.
            settings: clip norm, noise multiplier, expected batch size, clipping mode.
            mode: nanobatch or vectorized (AUTO must be resolved by the caller).
            secret: the run's secret key (``covidct.privacy.secret``): the noise of step t is
                derived from it and t, and from nothing a user can read.
            layer_groups: for per-layer clipping, indices into model.trainable_variables of each
                group; default: one group per layer that owns variables.
            vectorized_impl: how the vectorized mode gets per-unit gradients: "layerwise"
                (one batched backward pass; Conv2D, Dense and GroupNormalization layers only),
                "vectorized_map", or None to take layerwise whenever the model allows it.
            jit_compile: compile the graph functions with XLA (required on the IPU).
            runner: ``runner(fn, *args)`` calls a graph function on the device (the IPU's
                ``strategy.run``); default: a plain call.
            unit_loss: how a unit's slice logits make its loss (``unit_losses``).
        """
        self.model = model
        self.settings = settings
        self.mode = mode
        self._secret = secret
        self.unit_loss = unit_loss
        self.variables = list(model.trainable_variables)
        # built under a strategy's scope (training.build does), the sums are per replica
        self._strategy = tf.distribute.get_strategy()
        self.num_replicas = int(self._strategy.num_replicas_in_sync)
        sync = replicated.sum_on_read(self.num_replicas)
        self._acc = [
            tf.Variable(tf.zeros_like(v), trainable=False, name=f"dp_acc_{i}", **sync)
            for i, v in enumerate(self.variables)
        ]
        self._units = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="dp_units", **sync)
        self._loss = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="dp_loss", **sync)
        if layer_groups is None:
            layer_groups = per_layer_groups(model, self.variables)
        self.clipper = Clipper(settings, self.variables, layer_groups)
        self.engine, self.vectorized_impl = make_engine(
            model,
            self.variables,
            clipper=self.clipper,
            mode=mode,
            unit_loss=unit_loss,
            vectorized_impl=vectorized_impl,
        )
        self._jit = jit_compile
        # several replicas: every graph function runs once per replica (strategy.run)
        self._run: Callable[..., object] = runner or (
            self._strategy_run if self.num_replicas > 1 else _call
        )
        self._accumulate_fn = tf.function(
            self._accumulate_graph, reduce_retracing=True, jit_compile=jit_compile
        )
        self._reset_fn = tf.function(self._reset_graph, jit_compile=jit_compile)
        self._result_fn = tf.function(self._result_graph)
        # the traced update and fused last-chunk-and-update graphs, for the optimizer they were
        # traced with (held: an id() key could be reused by another optimizer after this one
        # is freed, and its graph would then update the wrong optimizer's slots)
        self._graphs: dict[str, tuple[keras.optimizers.Optimizer, Callable[..., object]]] = {}
        self._clean = False  # True when the sums are known to be zero (reset can be skipped)

    @property
    def group_norms(self) -> list[float]:
        """Per-layer clipping: each group's bound C_g (empty for flat clipping)."""
        return self.clipper.group_norms

    @property
    def _group_of_var(self) -> list[int]:
        return self.clipper.group_of_var

    def _accumulate_graph(
        self, x: tf.Tensor, mask: tf.Tensor, y: tf.Tensor, present: tf.Tensor
    ) -> None:
        self.engine.add_chunk(self._acc, self._loss, x, mask, y, present)
        self._units.assign_add(tf.reduce_sum(present))

    # ---- public API -------------------------------------------------------------------------

    def reset(self) -> None:
        """Start a new logical batch (free when ``apply`` already cleared the sums)."""
        if not self._clean:
            self._run(self._reset_fn)
            self._clean = True

    def _reset_graph(self) -> None:
        for acc in self._acc:
            acc.assign(tf.zeros_like(acc))
        self._units.assign(0.0)
        self._loss.assign(0.0)

    def accumulate(self, x: tf.Tensor, mask: tf.Tensor, y: tf.Tensor, present: tf.Tensor) -> None:
        """Add the clipped gradients of one chunk of units.

        Args:
            x: (U, k, H, W, 1) float32 slices of U units (padded slices have mask 0).
            mask: (U, k) float32, 1 for a real slice.
            y: (U,) float32 unit labels.
            present: (U,) float32, 1 for a sampled unit, 0 for padding (keeps shapes static).
        """
        if self.num_replicas > 1:
            # strategy.run would hand this one chunk to EVERY replica: counted R times
            raise RuntimeError(
                f"{self.num_replicas} replicas: give each its own chunk with accumulate_replicas"
            )
        self._clean = False
        self._run(self._accumulate_fn, *_float_tensors(x, mask, y, present))

    def accumulate_replicas(self, chunks: Mapping[int, Sequence[object]]) -> None:
        """Add one chunk per replica of THIS worker: ``{global replica id: (x, mask, y,
        present)}`` (``covidct.distributed.replica_chunks``); all chunks have one shape.

        Every replica of the cluster must take part in every call (the same number of calls on
        every worker; pad with ``present = 0``). With one replica: ``accumulate(*chunks[0])``.
        """
        if self.num_replicas == 1:
            (chunk,) = chunks.values()
            self.accumulate(*chunk)  # type: ignore[arg-type]
            return

        args = replicated.distribute(self._strategy, chunks)
        self._clean = False
        self._run(self._accumulate_fn, *args)

    def _strategy_run(self, fn: Callable[..., object], *args: object) -> object:
        return self._strategy.run(fn, args=args)

    @property
    def units_in_batch(self) -> float:
        return float(self._units.numpy())

    @property
    def mean_unit_loss(self) -> float:
        n = self.units_in_batch
        return float(self._loss.numpy()) / n if n else float("nan")

    def clipped_sum(self) -> list[tf.Tensor]:
        """The accumulated clipped sum (no noise): for tests and diagnostics only."""
        return [tf.identity(a) for a in self._acc]

    def result(self, *, step: int) -> list[tf.Tensor]:
        """The noisy gradient of the logical batch: (sum + N(0, sigma^2 C^2)) / (q N).

        The noise is drawn here, once per logical batch, from a stateless generator keyed by
        the step's seed from the run's secret key and the variable's index.
        """
        return list(self._result_fn(self._noise_seed(step)))

    def _noise_seed(self, step: int) -> tf.Tensor:
        """Step ``step``'s secret noise seed, as a graph INPUT (never a constant in a graph)."""
        return tf.convert_to_tensor(self._secret.noise_seed(step), tf.int64)

    def apply(self, optimizer: keras.optimizers.Optimizer, *, step: int) -> None:
        """``optimizer.apply_gradients(result(step))`` as one compiled graph (no eager ops)."""
        fn = self._graph("apply", optimizer)
        self._run(fn, self._noise_seed(step))
        self._clean = True

    def _graph(self, which: str, optimizer: keras.optimizers.Optimizer) -> Callable[..., object]:
        """The traced ``apply`` or ``fused`` graph for ``optimizer`` (traced again for another)."""
        held = self._graphs.get(which)
        if held is None or held[0] is not optimizer:
            body = self._apply_graph if which == "apply" else self._fused_graph
            fn = tf.function(
                functools.partial(body, optimizer),
                reduce_retracing=which == "fused",
                jit_compile=self._jit,
            )
            held = self._graphs[which] = (optimizer, fn)
        return held[1]

    def run_batch(
        self,
        rounds: Iterable[Mapping[int, Sequence[object]]],
        optimizer: keras.optimizers.Optimizer,
        *,
        step: int,
        read_loss: bool = False,
    ) -> float | None:
        """One logical batch: ``reset``, ``accumulate_replicas`` per round of chunks, ``apply``.

        With one replica the last round and ``apply`` run as ONE graph: the same arithmetic and
        the same noise as the separate calls (tested), one graph launch fewer, and the noise
        draw may run while the backward pass does.

        Returns:
            the batch's mean unit loss (noise-free: for the console only) when ``read_loss``
            and the batch had units, else None.
        """
        self.reset()
        last: Mapping[int, Sequence[object]] | None = None
        for chunks in rounds:  # one round behind: the last one may go with apply
            if last is not None:
                self.accumulate_replicas(last)
            last = chunks
        if last is not None and self.num_replicas == 1:
            ((x, mask, y, present),) = last.values()
            fn = self._graph("fused", optimizer)
            self._clean = False
            out = self._run(fn, *_float_tensors(x, mask, y, present), self._noise_seed(step))
            self._clean = True
            units, loss = cast(tuple[tf.Tensor, tf.Tensor], out)
            n = float(units)
            return float(loss) / n if read_loss and n else None
        if last is not None:
            self.accumulate_replicas(last)
        mean = self.mean_unit_loss if read_loss and self.units_in_batch else None
        self.apply(optimizer, step=step)
        return mean

    def _apply_graph(self, optimizer: keras.optimizers.Optimizer, noise_seed: tf.Tensor) -> None:
        if self.num_replicas > 1:  # in a replica (strategy.run)
            grads = self._replica_result_graph(noise_seed)
            # already summed over the replicas: the optimizer must not sum them again
            optimizer.apply_gradients(
                zip(grads, self.variables, strict=True),
                experimental_aggregate_gradients=False,
            )
        else:
            grads = self._result_graph(noise_seed)
            optimizer.apply_gradients(zip(grads, self.variables, strict=True))
        self._reset_graph()  # the next logical batch starts from zero

    def _fused_graph(
        self,
        optimizer: keras.optimizers.Optimizer,
        x: tf.Tensor,
        mask: tf.Tensor,
        y: tf.Tensor,
        present: tf.Tensor,
        noise_seed: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The last chunk, then the update; (units, summed loss) as they were before the reset.
        tf.function keeps the stateful ops in program order (automatic control dependencies)."""
        self._accumulate_graph(x, mask, y, present)
        units, loss = self._units.read_value(), self._loss.read_value()
        self._apply_graph(optimizer, noise_seed)
        return units, loss

    def _result_graph(self, noise_seed: tf.Tensor) -> list[tf.Tensor]:
        """One replica, or a cross-replica read (the sums over all replicas)."""
        return noisy_mean(self._acc, settings=self.settings, noise_seed=noise_seed)

    def _replica_result_graph(self, noise_seed: tf.Tensor) -> list[tf.Tensor]:
        """In each replica: the all-reduced sum with ONE noise draw (``engines.replicated``)."""
        return replicated.replica_noisy_mean(self._acc, self.settings, noise_seed)


def _call(fn: Callable[..., object], *args: object) -> object:
    return fn(*args)


def _float_tensors(*arrays: object) -> list[tf.Tensor]:
    return [tf.convert_to_tensor(a, tf.float32) for a in arrays]
