"""DP-SGD with per-stage clipping on a model pipelined over several Graphcore IPUs.

With ``--clipping per-layer --pipeline-stages N`` on an IPU, stage s (a run of consecutive layers
from ``covidct.privacy.stages.stage_groups``) runs on IPU s, and each logical batch is one run
of Graphcore's pipeline with one privacy unit per mini-batch (NanoBatch: the physical batch is
one unit; Lee et al. 2021, arXiv 2109.12191, section on pipelined models):

1. ``split_model`` cuts the Keras model into N stage models at the stage boundaries; the
   tensors that cross a boundary (a skip connection included) are passed on explicitly;
2. ``ipu.pipelining_ops.pipeline(computational_stages=..., device_mapping=[0..N-1],
   gradient_accumulation_count=<units in the logical batch>, optimizer_function=...)`` runs
   them; the one-unit mini-batches come from an ``IPUInfeedQueue``;
3. Graphcore's pipeline calls the optimizer's ``compute_gradients`` on EACH mini-batch, sums the
   results in its gradient accumulators, and calls ``apply_gradients`` ONCE with the sums
   (the documented contract of ``optimizer_function``; read in graphcore/tensorflow,
   tensorflow/python/ipu/ops/pipelining_ops.py). ``StageClippingOptimizer`` uses exactly
   that: its ``compute_gradients`` clips each stage's part of the unit's gradient to C_s
   (``mechanism.clip_by_groups``, one stage at a time, colocated with that stage's gradients,
   so no stage needs another stage's gradient), and its ``apply_gradients`` adds
   N(0, sigma^2 C^2) once and divides by q*N (``mechanism.noisy_mean``) before the real
   optimizer updates the weights. The clip and noise formulas live in
   ``covidct.privacy.mechanism`` only; sum_s C_s^2 = C^2 keeps the unit's sensitivity at C, so
   the accounting is unchanged.

What is NOT verified, and why (no IPU hardware and no Graphcore wheel here):

- Nothing here has run on an IPU. The tests replace ``tensorflow.python.ipu`` by a fake that
  records the arguments and emulates the documented semantics on the CPU.
- Graphcore's TensorFlow is its own build of an older TensorFlow 2 release, while
  ``covidct.tfsetup`` requires tf-keras of the same minor version as TensorFlow (2.21 pinned);
  running this needs the project ported to Graphcore's TensorFlow and Keras.
- ``OptimizerFunctionOutput`` accepts a TF1 ``Optimizer`` or an ``OptimizerV2`` of
  ``tensorflow.python.keras``; tf-keras optimizers are neither (checked here: isinstance is
  False), so ``StageClippingOptimizer`` is a ``tf.compat.v1.train.Optimizer`` that hands the
  noisy mean to the training optimizer's ``apply_gradients``.
- Whether Poplar places the per-stage clipping ops in stage s's backward pass (they depend only
  on stage s's gradients and are colocated with them) rather than moving the gradients, is up
  to Graphcore's compiler; its docstring says the optimizer "will internally create
  corresponding backpropagation pipeline stages for each pipeline stage and colocate them".
- The accumulation must be a plain SUM: ``reduction_method=SUM`` is passed when the SDK's
  ``pipeline`` has that argument (SUM is its documented default; older SDKs always sum).
- The accumulation count changes with the Poisson batch; it is passed as a tensor (the newest
  pipelining_ops.py read converts it with ``convert_to_tensor`` and feeds it to the pipeline
  op; an older one, graphcore/tensorflow@005c576, makes it an op attribute, which needs a
  Python int and a recompile per count). Any lower bound on the count relative to the number
  of stages is not documented in what was read; ``min_count`` pads with units of weight 0.
- ``tf.random.stateless_normal`` and ``stateless_fold_in`` (the noise) must be supported on the
  IPU; XLA draws other numbers than the CPU from the same seed.
- The training loss shown on the console is read from the outfeed after the step, so the
  progress bar lags one step behind.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import queue
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from covidct.privacy.mechanism import (
    DPSettings,
    clip_by_groups,
    group_clip_norms,
    noisy_mean,
    unit_losses,
)
from covidct.privacy.modes import ClippingMode, UnitLoss
from covidct.privacy.secret import RunSecret
from covidct.tfsetup import keras, tf

__all__ = [
    "PipelinePlan",
    "PipelinedDPGradient",
    "StageClippingOptimizer",
    "accumulation_count",
    "graphcore_ipu",
    "layer_stages",
    "plan_pipeline",
    "split_model",
    "stage_functions",
]

logger = logging.getLogger(__name__)


class PipelineSplitError(ValueError):
    """The model cannot be cut into pipeline stages at the requested boundaries."""


def graphcore_ipu() -> Any:
    """Graphcore's ``tensorflow.python.ipu`` (ImportError without Graphcore's TensorFlow)."""
    return importlib.import_module("tensorflow.python.ipu")


@dataclass(frozen=True)
class PipelinePlan:
    """Where each stage runs and what bounds its clipping.

    Attributes:
        stage_of_var: the stage of each index of ``model.trainable_variables``.
        stage_of_layer: the stage of each layer of ``model.layers`` (input layers: stage 0).
        bounds: C_s per stage, sum_s C_s^2 = C^2.
        device_mapping: the IPU of each stage (stage s on IPU s).
    """

    stage_of_var: tuple[int, ...]
    stage_of_layer: tuple[int, ...]
    bounds: tuple[float, ...]
    device_mapping: tuple[int, ...]

    @property
    def n_stages(self) -> int:
        return len(self.bounds)

    @property
    def ipus(self) -> int:
        """IPUs to select (``IPUConfig.auto_select_ipus``): one per stage."""
        return len(set(self.device_mapping))


def layer_stages(model: keras.Model, groups: Sequence[Sequence[int]]) -> list[int]:
    """The stage of every layer of ``model.layers``, from the stages' variable indices.

    A layer with parameters is in the stage of its variables; a layer without (activation,
    pooling, addition) runs with the last layer before it that has parameters (stage 0 before
    the first). Stages must be consecutive in layer order (``stage_groups`` makes them so).

    Raises:
        PipelineSplitError: a layer's variables fall in two stages, or stages are not in order.
    """
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    stage_of_var = {i: s for s, members in enumerate(groups) for i in members}
    out: list[int] = []
    current = 0
    for layer in model.layers:
        stages = {stage_of_var[index[id(v)]] for v in layer.trainable_variables if id(v) in index}
        if len(stages) > 1:
            raise PipelineSplitError(
                f"layer {layer.name!r} holds variables of stages {sorted(stages)}: a layer "
                "cannot be split across IPUs; ask for fewer pipeline stages"
            )
        if stages:
            (stage,) = stages
            if stage < current:
                raise PipelineSplitError(
                    f"layer {layer.name!r} is in stage {stage} after a layer of stage {current}: "
                    "stages must be runs of consecutive layers"
                )
            current = stage
        out.append(current)
    return out


def plan_pipeline(
    model: keras.Model,
    groups: Sequence[Sequence[int]],
    *,
    clip_norm: float,
    proportional: bool,
) -> PipelinePlan:
    """The stage of every variable and layer, each stage's C_s, and stage s -> IPU s.

    Args:
        model: the Keras model.
        groups: per stage, indices into ``model.trainable_variables`` (``stage_groups``).
        clip_norm: C, the bound on one unit's whole gradient.
        proportional: C_s^2 proportional to the stage's parameter count (else equal).
    """
    variables = list(model.trainable_variables)
    stage_of_var = [0] * len(variables)
    for s, members in enumerate(groups):
        for i in members:
            stage_of_var[i] = s
    sizes = [sum(int(tf.size(variables[i])) for i in members) for members in groups]
    bounds = group_clip_norms(sizes, clip_norm=clip_norm, proportional=proportional)
    return PipelinePlan(
        stage_of_var=tuple(stage_of_var),
        stage_of_layer=tuple(layer_stages(model, groups)),
        bounds=tuple(bounds),
        device_mapping=tuple(range(len(groups))),
    )


def split_model(model: keras.Model, stage_of_layer: Sequence[int]) -> list[keras.Model]:
    """Cut a functional model into one model per stage, sharing the original layers.

    Stage s takes every tensor made before stage s and used in stage s or later (the model's
    input, or several tensors across a skip connection) and returns every tensor it holds that
    a later stage (or the loss, for the model's output) still needs.

    Raises:
        PipelineSplitError: a layer is called more than once (its stage would be ambiguous).
    """
    n = max(stage_of_layer) + 1
    made: dict[int, int] = {id(t): -1 for t in model.inputs}  # tensor -> stage that makes it
    last_use: dict[int, int] = {}
    tensors: dict[int, Any] = {id(t): t for t in model.inputs}  # in order of creation
    for layer, s in zip(model.layers, stage_of_layer, strict=True):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if len(getattr(layer, "_inbound_nodes", [])) != 1:
            raise PipelineSplitError(
                f"layer {layer.name!r} is called more than once: it cannot be given one stage"
            )
        for t in tf.nest.flatten(layer.input):
            last_use[id(t)] = max(last_use.get(id(t), -1), s)
        for t in tf.nest.flatten(layer.output):
            made[id(t)] = s
            tensors[id(t)] = t
    for t in tf.nest.flatten(model.outputs):
        last_use[id(t)] = n  # the loss, after the last stage
    stages = []
    for s in range(n):
        ins = [t for k, t in tensors.items() if made[k] < s <= last_use.get(k, -1)]
        outs = [t for k, t in tensors.items() if made[k] <= s < last_use.get(k, -1)]
        stages.append(keras.Model(ins, outs, name=f"{model.name}_stage{s}"))
    return stages


StageFn = Callable[..., tuple[tf.Tensor, ...]]


def stage_functions(stage_models: Sequence[keras.Model], *, unit_loss: UnitLoss) -> list[StageFn]:
    """The ``computational_stages`` of the pipeline, for one unit per mini-batch.

    Stage 0 takes ``(noise_seed, x, mask, y, weight)`` (``noise_seed``, the step's secret seed,
    from the pipeline's ``inputs``, the rest from the infeed: x (k, H, W, 1), mask (k,), y and
    weight scalars); every stage passes ``noise_seed, <boundary tensors>, mask, y, weight`` on;
    the last returns ``(noise_seed, loss)`` with
    ``loss = weight * unit loss`` (``mechanism.unit_losses``), so a padding unit (weight 0) has
    a zero gradient and adds nothing.
    """
    last = len(stage_models) - 1

    def make(s: int, sub: keras.Model) -> StageFn:
        def stage(noise_seed: tf.Tensor, *args: tf.Tensor) -> tuple[tf.Tensor, ...]:
            *acts, mask, y, weight = args
            out = tf.nest.flatten(sub(acts[0] if len(acts) == 1 else list(acts), training=True))
            if s < last:
                return (noise_seed, *out, mask, y, weight)
            logits = out[0][:, 0]
            loss = unit_losses(logits[None], mask[None], y[None], unit_loss)[0]
            return (noise_seed, loss * weight)

        stage.__name__ = f"stage{s}"
        return stage

    return [make(s, sub) for s, sub in enumerate(stage_models)]


def accumulation_count(units: int, *, min_count: int = 1) -> int:
    """Mini-batches in one pipeline run: one per unit of the logical batch (at least
    ``min_count``; an empty Poisson batch still takes its noisy step with one weight-0 unit)."""
    return max(int(units), int(min_count), 1)


ApplyFn = Callable[[list[tuple[tf.Tensor, tf.Variable]]], Any]


class StageClippingOptimizer(tf.compat.v1.train.Optimizer):  # type: ignore[misc]
    """The optimizer handed to Graphcore's pipeline through ``OptimizerFunctionOutput``.

    ``compute_gradients`` (called by the pipeline on every mini-batch = one unit) clips each
    stage's part of the gradient to its C_s; the pipeline sums those; ``apply_gradients``
    (called once per pipeline run with the sums) adds the noise once, divides by q*N and hands
    the result to ``apply_fn`` (the training optimizer's ``apply_gradients``).

    A TF1 ``Optimizer`` subclass: ``OptimizerFunctionOutput`` accepts those in every SDK
    version read, while its ``OptimizerV2`` branch expects ``tensorflow.python.keras``'s class.
    """

    def __init__(
        self,
        variables: Sequence[tf.Variable],
        stage_of_var: Sequence[int],
        *,
        bounds: Sequence[float],
        settings: DPSettings,
        noise_seed: tf.Tensor,
        apply_fn: ApplyFn,
    ) -> None:
        super().__init__(use_locking=False, name="StageClippingOptimizer")
        self.dp_variables = list(variables)
        self.stage_of_var = list(stage_of_var)
        self.bounds = list(bounds)
        self.settings = settings
        self.noise_seed = noise_seed
        self.apply_fn = apply_fn

    def clip_unit(
        self, grads: Sequence[tf.Tensor], stages: Sequence[int] | None = None
    ) -> list[tf.Tensor]:
        """One unit's gradient with stage s clipped to C_s, each stage on its own.

        ``stages``: the stage of each gradient (default: ``stage_of_var``, the order of the
        model's trainable variables)."""
        stages = list(self.stage_of_var if stages is None else stages)
        out: list[tf.Tensor | None] = [None] * len(grads)
        for s, bound in enumerate(self.bounds):
            members = [i for i, k in enumerate(stages) if k == s]
            if not members:
                continue
            with tf.compat.v1.colocate_with(grads[members[0]]):  # stage s's own IPU
                clipped = clip_by_groups(
                    [grads[i] for i in members], [0] * len(members), bounds=[bound]
                )
            for i, g in zip(members, clipped, strict=True):
                out[i] = g
        return [g for g in out if g is not None]

    def compute_gradients(
        self, loss: tf.Tensor, var_list: Sequence[tf.Variable] | None = None, **kwargs: Any
    ) -> list[tuple[tf.Tensor, tf.Variable]]:
        """Per mini-batch: the unit's gradient, clipped stage by stage (graph mode)."""
        variables = list(var_list) if var_list is not None else self.dp_variables
        grads = tf.gradients(loss, variables)
        grads = [
            tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables, strict=True)
        ]
        # the pipeline may list the variables in another order: look each one's stage up
        stage_of = {id(v): k for v, k in zip(self.dp_variables, self.stage_of_var, strict=True)}
        stages = [stage_of[id(v)] for v in variables]
        return list(zip(self.clip_unit(grads, stages), variables, strict=True))

    def apply_gradients(
        self,
        grads_and_vars: Sequence[tuple[tf.Tensor, tf.Variable]],
        global_step: Any = None,
        name: str | None = None,
    ) -> Any:
        """Once per logical batch: (sum + N(0, sigma^2 C^2)) / (q N), then the real update."""
        pairs = list(grads_and_vars)
        noisy = noisy_mean(
            [g for g, _ in pairs], settings=self.settings, noise_seed=self.noise_seed
        )
        return self.apply_fn(list(zip(noisy, [v for _, v in pairs], strict=True)))

    # tf.compat.v1.train.Optimizer's abstract hooks: never reached, apply_gradients is whole
    def _apply_dense(self, grad: tf.Tensor, var: tf.Variable) -> Any:
        raise NotImplementedError

    def _resource_apply_dense(self, grad: tf.Tensor, handle: Any) -> Any:
        raise NotImplementedError


class PipelinedDPGradient:
    """``DPGradient``'s training-loop interface over Graphcore's pipeline (see the module doc).

    ``accumulate`` only queues the step's units on the host; ``apply`` runs the pipeline once:
    every queued unit is one mini-batch, clipped per stage, summed, noised once, applied.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        settings: DPSettings,
        secret: RunSecret,
        groups: Sequence[Sequence[int]],
        unit_loss: UnitLoss,
        runner: Callable[..., Any],
        ipu: Any = None,
        compile_fn: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
        min_count: int = 1,
    ) -> None:
        """Cut the model into stages (nothing runs until the first ``apply``).

        Args:
            model: the Keras model, built under the IPU strategy's scope.
            settings: clip norm C (required), sigma, q*N; per-layer clipping.
            secret: the run's secret key; the noise of step t is derived from it and t.
            groups: per stage, indices into ``model.trainable_variables`` (``stage_groups``).
            unit_loss: how a unit's slice logits make its loss.
            runner: ``runner(fn, *args)`` runs a function on the device (``strategy.run``).
            ipu: Graphcore's ``tensorflow.python.ipu`` (default: imported).
            compile_fn: wraps the step function (default: XLA-compiled ``tf.function``, as
                Graphcore's TF2 guide requires for IPU code).
            min_count: the fewest mini-batches per run (pads with weight-0 units).
        """
        if settings.clip_norm is None or settings.clipping is not ClippingMode.PER_LAYER:
            raise ValueError("the IPU pipeline clips each stage: per-layer clipping with a C")
        if len(groups) < 2:
            raise ValueError(f"a pipeline needs at least two stages, got {len(groups)}")
        self.model = model
        self.settings = settings
        self._secret = secret
        self.unit_loss = unit_loss
        self.variables = list(model.trainable_variables)
        self.plan = plan_pipeline(
            model,
            groups,
            clip_norm=settings.clip_norm,
            proportional=settings.proportional_split,
        )
        self.group_norms = list(self.plan.bounds)
        self.stages = stage_functions(
            split_model(model, self.plan.stage_of_layer), unit_loss=unit_loss
        )
        self._ipu = ipu if ipu is not None else graphcore_ipu()
        self._run = runner
        self._compile = compile_fn or (lambda fn: tf.function(fn, jit_compile=True))
        self.min_count = int(min_count)
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._feed: queue.Queue[tuple[np.ndarray, ...]] = queue.Queue()
        self._fns: dict[int, Callable[..., Any]] = {}
        self._infeed: Any = None
        self._outfeed: Any = None
        self._padding: tuple[np.ndarray, ...] | None = None
        self._last_loss = float("nan")
        self.last_count = 0  # mini-batches of the last pipeline run

    # ---- the training loop's interface (as DPGradient) -------------------------------------

    def reset(self) -> None:
        self._pending.clear()

    def accumulate(self, x: Any, mask: Any, y: Any, present: Any) -> None:
        """Queue the present units of one chunk (x (U, k, H, W, 1), mask (U, k), y (U,),
        present (U,)); padding units (present 0) are dropped here."""
        x, mask, y, present = (np.asarray(a, np.float32) for a in (x, mask, y, present))
        if x.shape[0]:  # a weight-0 unit of this shape pads a run (an empty batch included)
            self._padding = tuple(np.zeros_like(a[0]) for a in (x, mask, y, present))
        for u in range(x.shape[0]):
            if present[u] > 0:
                self._pending.append((x[u], mask[u], y[u], present[u]))

    def accumulate_replicas(self, chunks: Mapping[int, Sequence[Any]]) -> None:
        if len(chunks) != 1:
            raise ValueError("the IPU pipeline is one replica: give one chunk")
        (chunk,) = chunks.values()
        self.accumulate(*chunk)

    @property
    def units_in_batch(self) -> float:
        return float(len(self._pending))

    @property
    def mean_unit_loss(self) -> float:
        """The mean unit loss of the LAST pipeline run (read from its outfeed after it ran)."""
        return self._last_loss

    def apply(self, optimizer: Any, *, step: int) -> None:
        """Run the pipeline once over the queued units: clip per stage, sum, noise, update."""
        if self._padding is None:
            raise RuntimeError("no chunk was accumulated yet: the unit shape is unknown")
        units = list(self._pending)
        count = accumulation_count(len(units), min_count=self.min_count)
        units += [self._padding] * (count - len(units))  # weight 0: no gradient, no loss
        fn = self._step_fn(optimizer, units[0])
        for unit in units:
            self._feed.put(unit)
        noise_seed = tf.convert_to_tensor(self._secret.noise_seed(step), tf.int64)
        self._run(fn, noise_seed, tf.constant(count, tf.int32))
        self.last_count = count
        losses = np.asarray(self._outfeed.dequeue(), np.float64).reshape(-1)
        n = len(self._pending)
        self._last_loss = float(losses.sum() / n) if n else float("nan")
        self._pending.clear()

    def run_batch(
        self,
        rounds: Iterable[Mapping[int, Sequence[Any]]],
        optimizer: Any,
        *,
        step: int,
        read_loss: bool = False,
    ) -> float | None:
        """As ``DPGradient.run_batch``: queue every round's chunk, then one pipeline run; the
        mean unit loss is that run's (when ``read_loss`` and the batch had units)."""
        self.reset()
        for chunks in rounds:
            self.accumulate_replicas(chunks)
        n = len(self._pending)
        self.apply(optimizer, step=step)
        return self._last_loss if read_loss and n else None

    # ---- building the pipeline -------------------------------------------------------------

    def _units(self) -> Iterator[tuple[np.ndarray, ...]]:
        while True:  # blocks until the next step queues its units
            yield self._feed.get()

    def _step_fn(self, optimizer: Any, example: tuple[np.ndarray, ...]) -> Callable[..., Any]:
        fn = self._fns.get(id(optimizer))
        if fn is not None:
            return fn
        ipu = self._ipu
        signature = tuple(tf.TensorSpec(a.shape, tf.float32) for a in example)
        dataset = tf.data.Dataset.from_generator(self._units, output_signature=signature)
        self._infeed = ipu.ipu_infeed_queue.IPUInfeedQueue(dataset)
        self._outfeed = ipu.ipu_outfeed_queue.IPUOutfeedQueue()
        ops = ipu.pipelining_ops

        def apply_fn(pairs: list[tuple[tf.Tensor, tf.Variable]]) -> Any:
            return optimizer.apply_gradients(pairs)

        def optimizer_function(noise_seed: tf.Tensor, loss: tf.Tensor) -> Any:
            opt = StageClippingOptimizer(
                self.variables,
                self.plan.stage_of_var,
                bounds=self.plan.bounds,
                settings=self.settings,
                noise_seed=noise_seed,
                apply_fn=apply_fn,
            )
            return ops.OptimizerFunctionOutput(opt, loss)

        extra: dict[str, Any] = {}
        params = inspect.signature(ops.pipeline).parameters
        accumulation = getattr(ipu, "gradient_accumulation", None)
        if "reduction_method" in params and accumulation is not None:
            # a SUM of the clipped unit gradients: MEAN would divide by the realised count
            extra["reduction_method"] = accumulation.GradientAccumulationReductionMethod.SUM

        def step_fn(noise_seed: tf.Tensor, count: tf.Tensor) -> Any:
            return ops.pipeline(
                computational_stages=self.stages,
                gradient_accumulation_count=count,
                inputs=[noise_seed],
                infeed_queue=self._infeed,
                outfeed_queue=self._outfeed,
                optimizer_function=optimizer_function,
                device_mapping=list(self.plan.device_mapping),
                pipeline_schedule=ops.PipelineSchedule.Grouped,
                outfeed_loss=True,
                name="dp_pipeline",
                **extra,
            )

        fn = self._fns[id(optimizer)] = self._compile(step_fn)
        logger.info(
            "IPU pipeline: %d stages on IPUs %s, per-stage clip bounds %s",
            self.plan.n_stages,
            list(self.plan.device_mapping),
            ", ".join(f"{b:.4g}" for b in self.plan.bounds),
        )
        return fn
