"""Pipelined per-stage clipping on IPUs, checked on the CPU with a FAKE ``tensorflow.python.ipu``.

No IPU or Graphcore wheel is available: the fake records what covidct asks of Graphcore's API
and emulates ``pipelining_ops.pipeline``'s documented training contract (the optimizer's
``compute_gradients`` on every mini-batch, a SUM over the mini-batches, ``apply_gradients``
once). The clipping and noise run for real, on TensorFlow tensors.
"""

from __future__ import annotations

import enum
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from covidct import devices
from covidct.ipu.pipeline import (
    PipelinedDPGradient,
    StageClippingOptimizer,
    accumulation_count,
    layer_stages,
    plan_pipeline,
    split_model,
    stage_functions,
)
from covidct.models import build_model
from covidct.privacy.mechanism import DPSettings, unit_losses
from covidct.privacy.modes import ClippingMode, ExecutionMode, UnitLoss
from covidct.privacy.stages import stage_groups
from covidct.privacy.step import DPGradient
from covidct.tfsetup import keras, tf
from tests.covidct.keys import known_secret

SIZE = 16
K = 2


class FakeIPU:
    """Stands in for Graphcore's ``tensorflow.python.ipu``; records every call."""

    def __init__(self) -> None:
        self.configs: list[Any] = []
        self.pipeline_calls: list[dict[str, Any]] = []
        self.apply_calls = 0
        fake = self

        class IPUConfig:
            def __init__(self) -> None:
                self.auto_select_ipus: Any = None
                self.configured = False
                fake.configs.append(self)

            def configure_ipu_system(self) -> None:
                self.configured = True

        class IPUStrategy:
            def run(self, fn: Callable[..., Any], args: tuple[Any, ...] = ()) -> Any:
                return fn(*args)

        class IPUInfeedQueue:
            def __init__(self, dataset: tf.data.Dataset) -> None:
                self.dataset = dataset
                self._iterator: Any = None

            def next(self) -> tuple[tf.Tensor, ...]:
                if self._iterator is None:
                    self._iterator = iter(self.dataset)
                return tuple(next(self._iterator))

        class IPUOutfeedQueue:
            def __init__(self) -> None:
                self.items: list[float] = []

            def dequeue(self) -> np.ndarray:
                out, self.items = np.asarray(self.items), []
                return out

        class OptimizerFunctionOutput:
            def __init__(self, opt: Any, loss: tf.Tensor) -> None:
                if not isinstance(opt, tf.compat.v1.train.Optimizer):
                    raise TypeError("OptimizerFunctionOutput.opt must be a TensorFlow Optimizer")
                self.opt, self.loss = opt, loss

        class PipelineSchedule(enum.IntEnum):
            Grouped = 0
            Interleaved = 1
            Sequential = 2

        class GradientAccumulationReductionMethod(enum.Enum):
            SUM = "sum"
            MEAN = "mean"

        def pipeline(
            computational_stages: list[Callable[..., Any]],
            gradient_accumulation_count: Any = None,
            repeat_count: int = 1,
            inputs: list[Any] | None = None,
            infeed_queue: Any = None,
            outfeed_queue: Any = None,
            optimizer_function: Callable[..., Any] | None = None,
            device_mapping: list[int] | None = None,
            pipeline_schedule: Any = None,
            outfeed_loss: bool = False,
            reduction_method: Any = GradientAccumulationReductionMethod.SUM,
            name: str | None = None,
        ) -> None:
            """The documented training semantics, one mini-batch at a time."""
            assert optimizer_function is not None and inputs is not None
            fake.pipeline_calls.append(
                {
                    "n_stages": len(computational_stages),
                    "count": int(gradient_accumulation_count),
                    "device_mapping": list(device_mapping or []),
                    "schedule": pipeline_schedule,
                    "reduction_method": reduction_method,
                    "outfeed_loss": outfeed_loss,
                }
            )
            assert len(device_mapping or []) == len(computational_stages)
            variables: list[tf.Variable] = []

            @tf.function
            def mini_batch(*args: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
                outs = args
                for stage in computational_stages:
                    outs = stage(*outs)
                result = optimizer_function(*outs)
                pairs = result.opt.compute_gradients(result.loss)
                variables[:] = [v for _, v in pairs]
                return [g for g, _ in pairs], result.loss

            sums: list[tf.Tensor] | None = None
            for _ in range(int(gradient_accumulation_count)):
                grads, loss = mini_batch(*inputs, *infeed_queue.next())
                sums = grads if sums is None else [a + b for a, b in zip(sums, grads, strict=True)]
                if outfeed_loss:
                    outfeed_queue.items.append(float(loss))

            @tf.function
            def weight_update(step: tf.Tensor, grads: list[tf.Tensor]) -> None:
                result = optimizer_function(step, tf.constant(0.0))
                result.opt.apply_gradients(list(zip(grads, variables, strict=True)))

            weight_update(inputs[0], sums)
            fake.apply_calls += 1

        module = types.ModuleType("tensorflow.python.ipu")
        module.config = types.SimpleNamespace(IPUConfig=IPUConfig)  # type: ignore[attr-defined]
        module.ipu_strategy = types.SimpleNamespace(IPUStrategy=IPUStrategy)  # type: ignore[attr-defined]
        module.ipu_infeed_queue = types.SimpleNamespace(IPUInfeedQueue=IPUInfeedQueue)  # type: ignore[attr-defined]
        module.ipu_outfeed_queue = types.SimpleNamespace(IPUOutfeedQueue=IPUOutfeedQueue)  # type: ignore[attr-defined]
        module.pipelining_ops = types.SimpleNamespace(  # type: ignore[attr-defined]
            pipeline=pipeline,
            OptimizerFunctionOutput=OptimizerFunctionOutput,
            PipelineSchedule=PipelineSchedule,
        )
        module.gradient_accumulation = types.SimpleNamespace(  # type: ignore[attr-defined]
            GradientAccumulationReductionMethod=GradientAccumulationReductionMethod
        )
        self.module = module


@pytest.fixture
def fake_ipu(monkeypatch: pytest.MonkeyPatch) -> FakeIPU:
    fake = FakeIPU()
    monkeypatch.setitem(sys.modules, "tensorflow.python.ipu", fake.module)
    return fake


def _model(name: str = "gn_cnn_small") -> keras.Model:
    return build_model(name, input_size=SIZE, seed=0)


def _units(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, K, SIZE, SIZE, 1), dtype=np.float32) * 5.0  # large: clipping is active
    mask = np.ones((n, K), np.float32)
    mask[0, 1] = 0.0  # one unit with a single slice
    y = (np.arange(n) % 2).astype(np.float32)
    return x, mask, y, np.ones(n, np.float32)


def _settings(*, sigma: float = 0.0, c: float = 0.05) -> DPSettings:
    return DPSettings(
        clip_norm=c,
        noise_multiplier=sigma,
        expected_batch_size=4.0,
        clipping=ClippingMode.PER_LAYER,
    )


def test_choose_device_selects_one_ipu_per_pipeline_stage(fake_ipu, monkeypatch):
    monkeypatch.setattr(devices, "_graphcore_available", lambda: True)
    choice = devices.choose_device(prefer="ipu", ipus=3)
    assert choice.kind == "ipu" and "3 IPUs" in choice.reason
    (cfg,) = fake_ipu.configs
    assert cfg.auto_select_ipus == 3 and cfg.configured


def test_train_asks_for_as_many_ipus_as_stages_only_with_per_layer_clipping():
    from covidct.train_config import TrainConfig
    from covidct.training.checks import pipeline_ipus as _pipeline_ipus

    per_layer = TrainConfig(clipping=ClippingMode.PER_LAYER, pipeline_stages=3)
    assert _pipeline_ipus(per_layer) == 3
    assert _pipeline_ipus(TrainConfig(clipping=ClippingMode.PER_LAYER, pipeline_stages=1)) == 1
    assert _pipeline_ipus(TrainConfig()) == 1


@pytest.mark.parametrize(("name", "n"), [("gn_cnn_small", 2), ("gn_cnn_small", 3)])
def test_stage_assignment_follows_stage_groups_and_each_stage_owns_its_variables(name, n):
    model = _model(name)
    groups = stage_groups(model, n)
    plan = plan_pipeline(model, groups, clip_norm=1.0, proportional=False)
    assert plan.device_mapping == tuple(range(n)) and plan.ipus == n
    for s, members in enumerate(groups):
        assert all(plan.stage_of_var[i] == s for i in members)
    assert list(plan.stage_of_layer) == sorted(plan.stage_of_layer)  # consecutive layers
    subs = split_model(model, plan.stage_of_layer)
    assert len(subs) == n
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    for s, sub in enumerate(subs):  # stage s's model holds exactly stage s's variables
        assert sorted(index[id(v)] for v in sub.trainable_variables) == sorted(groups[s])


def test_layer_split_across_stages_is_refused():
    model = _model()
    groups = stage_groups(model, 2)
    first = model.layers[[bool(layer.trainable_variables) for layer in model.layers].index(True)]
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    kernel, bias = (index[id(v)] for v in first.trainable_variables)
    broken = [[kernel], [i for g in groups for i in g if i != kernel]]
    with pytest.raises(ValueError, match="cannot be split"):
        layer_stages(model, broken)
    assert bias in broken[1]


@pytest.mark.parametrize(("name", "n"), [("gn_cnn_small", 3), ("gn_resnet18", 4)])
def test_stages_run_in_sequence_compute_the_models_unit_loss(name, n):
    model = _model(name)
    plan = plan_pipeline(model, stage_groups(model, n), clip_norm=1.0, proportional=False)
    stages = stage_functions(split_model(model, plan.stage_of_layer), unit_loss=UnitLoss.MEAN)
    x, mask, y, present = _units(1)
    outs: tuple[Any, ...] = (tf.constant(7, tf.int64), x[0], mask[0], y[0], present[0])
    for stage in stages:
        outs = stage(*outs)
    step, loss = outs
    logits = model(x[0], training=True)[:, 0]
    expected = unit_losses(logits[None], mask[:1], y[:1])[0]
    assert int(step) == 7
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)


def _pipeline_clipped_grads(model, plan, settings, unit, *, reverse=False):
    stages = stage_functions(split_model(model, plan.stage_of_layer), unit_loss=UnitLoss.MEAN)
    variables = list(model.trainable_variables)

    @tf.function
    def grads(x, mask, y, w):
        outs: tuple[Any, ...] = (tf.zeros([2], tf.int64), x, mask, y, w)
        for stage in stages:
            outs = stage(*outs)
        noise_seed, loss = outs  # the last stage returns (noise seed, weighted unit loss)
        opt = StageClippingOptimizer(
            variables,
            plan.stage_of_var,
            bounds=plan.bounds,
            settings=settings,
            noise_seed=noise_seed,
            apply_fn=lambda pairs: None,
        )
        if not reverse:
            return [g for g, _ in opt.compute_gradients(loss)]
        # the pipeline may hand the variables over in another order
        pairs = opt.compute_gradients(loss, var_list=variables[::-1])
        by_var = {id(v): g for g, v in pairs}
        return [g for g, _ in opt.compute_gradients(loss)] + [by_var[id(v)] for v in variables]

    return [g.numpy() for g in grads(*unit)]


@pytest.mark.parametrize("proportional", [False, True])
def test_pipeline_clip_keeps_each_stage_within_its_bound_and_the_unit_within_c(proportional):
    model = _model()
    groups = stage_groups(model, 3)
    c = 0.05
    plan = plan_pipeline(model, groups, clip_norm=c, proportional=proportional)
    assert sum(b * b for b in plan.bounds) == pytest.approx(c * c)
    x, mask, y, present = _units(1)
    g = _pipeline_clipped_grads(model, plan, _settings(c=c), (x[0], mask[0], y[0], present[0]))
    norms = [np.sqrt(sum(float(np.sum(g[i] ** 2)) for i in grp)) for grp in groups]
    for norm, bound in zip(norms, plan.bounds, strict=True):
        assert norm <= bound * (1 + 1e-5)
    assert min(n / b for n, b in zip(norms, plan.bounds, strict=True)) > 0.99  # all clipped
    assert np.sqrt(sum(n * n for n in norms)) <= c * (1 + 1e-5)


def test_pipeline_clip_equals_the_mechanisms_per_stage_clip():
    model = _model()
    groups = stage_groups(model, 3)
    settings = _settings()
    plan = plan_pipeline(model, groups, clip_norm=0.05, proportional=False)
    x, mask, y, present = _units(1)
    ours = _pipeline_clipped_grads(model, plan, settings, (x[0], mask[0], y[0], present[0]))
    dp = DPGradient(
        model,
        settings=settings,
        mode=ExecutionMode.NANOBATCH,
        secret=known_secret(0),
        layer_groups=groups,
    )
    dp.reset()
    dp.accumulate(x, mask, y, present)
    for a, b in zip(ours, dp.clipped_sum(), strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-9)


def test_pipeline_clip_does_not_depend_on_the_order_of_the_variables():
    model = _model()
    plan = plan_pipeline(model, stage_groups(model, 3), clip_norm=0.05, proportional=False)
    x, mask, y, present = _units(1)
    both = _pipeline_clipped_grads(
        model, plan, _settings(), (x[0], mask[0], y[0], present[0]), reverse=True
    )
    n = len(model.trainable_variables)
    assert any(np.any(a) for a in both[:n])
    for a, b in zip(both[:n], both[n:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)


def test_padding_unit_weight_zero_adds_nothing():
    model = _model()
    plan = plan_pipeline(model, stage_groups(model, 2), clip_norm=0.05, proportional=False)
    x, mask, y, _ = _units(1)
    g = _pipeline_clipped_grads(model, plan, _settings(), (x[0], mask[0], y[0], np.float32(0)))
    assert all(not np.any(a) for a in g)


def test_accumulation_count_is_the_logical_batch():
    assert accumulation_count(37) == 37
    assert accumulation_count(0) == 1  # an empty Poisson batch: one weight-0 unit
    assert accumulation_count(3, min_count=8) == 8


def _train_one_step(make_dp, units, *, steps=1, run_batch=False):
    keras.utils.set_random_seed(0)
    model = _model()
    opt = keras.optimizers.SGD(learning_rate=1.0)
    opt.build(model.trainable_variables)
    dp = make_dp(model)
    for step in range(steps):
        if run_batch:  # the training loop's call: the units in two rounds of chunks
            rounds = [{0: tuple(a[:2] for a in units)}, {0: tuple(a[2:] for a in units)}]
            loss = dp.run_batch(rounds, opt, step=step, read_loss=True)
            assert loss is not None and np.isfinite(loss)
        else:
            dp.reset()
            dp.accumulate(*units)
            dp.apply(opt, step=step)
    return [v.numpy() for v in model.trainable_variables], dp


def test_pipelined_run_batch_equals_its_separate_calls(fake_ipu):
    x, mask, y, present = _units(5, seed=1)
    present[2] = 0.0
    pipelined, _ = _pipelined_and_reference(_settings(sigma=1.3), seed=11, n_stages=3)
    want, _ = _train_one_step(pipelined, (x, mask, y, present), steps=2)
    got, dp = _train_one_step(pipelined, (x, mask, y, present), steps=2, run_batch=True)
    assert dp.last_count == 4
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sigma", [0.0, 1.3])
def test_pipelined_step_equals_the_mechanisms_step_noise_drawn_once(fake_ipu, sigma):
    """Clip per unit and stage, SUM, ONE noise draw, / qN: the same update as DPGradient.

    Noise added per mini-batch, a MEAN reduction, or clipping after accumulation would all
    change the update.
    """
    settings = _settings(sigma=sigma)
    # 5 units, one of them padding (present 0): the pipeline must run 4 mini-batches
    x, mask, y, present = _units(5, seed=1)
    present[2] = 0.0

    pipelined, reference = _pipelined_and_reference(settings, seed=11, n_stages=3)
    got, dp = _train_one_step(pipelined, (x, mask, y, present), steps=2)
    want, _ = _train_one_step(reference, (x, mask, y, present), steps=2)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    calls = fake_ipu.pipeline_calls
    assert len(calls) == 2 and fake_ipu.apply_calls == 2  # one weight update per logical batch
    for call in calls:
        assert call["count"] == 4  # one mini-batch per sampled unit
        assert call["n_stages"] == 3 and call["device_mapping"] == [0, 1, 2]
        assert call["reduction_method"].name == "SUM"
    assert np.isfinite(dp.mean_unit_loss)


def test_empty_poisson_batch_still_takes_its_noisy_step(fake_ipu):
    settings = _settings(sigma=1.3)
    x, mask, y, present = _units(2, seed=2)
    present[:] = 0.0  # no unit sampled: the step is noise only

    pipelined, reference = _pipelined_and_reference(settings, seed=5, n_stages=2)
    got, _ = _train_one_step(pipelined, (x, mask, y, present))
    want, _ = _train_one_step(reference, (x, mask, y, present))
    start, _ = _train_one_step(lambda m: _NoStep(), (x, mask, y, present))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(got, start, strict=True))  # noise moved it
    assert [c["count"] for c in fake_ipu.pipeline_calls] == [1]  # one weight-0 unit


def _pipelined_and_reference(settings, *, seed, n_stages):
    """Builders (model -> DP step) of the pipelined step and of DPGradient nanobatch with
    the same stages, settings and noise seed."""

    def pipelined(model):
        return PipelinedDPGradient(
            model,
            settings=settings,
            secret=known_secret(seed),
            groups=stage_groups(model, n_stages),
            unit_loss=UnitLoss.MEAN,
            runner=lambda fn, *args: fn(*args),
            compile_fn=lambda fn: fn,
        )

    def reference(model):
        return DPGradient(
            model,
            settings=settings,
            mode=ExecutionMode.NANOBATCH,
            secret=known_secret(seed),
            layer_groups=stage_groups(model, n_stages),
        )

    return pipelined, reference


class _NoStep:
    def reset(self) -> None:
        pass

    def accumulate(self, *args: Any) -> None:
        pass

    def apply(self, optimizer: Any, *, step: int) -> None:
        pass
