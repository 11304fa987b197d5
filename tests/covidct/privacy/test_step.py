"""The DP step against hand computation, against itself in both modes, and tensorflow-privacy."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.privacy.mechanism import (
    ClippingMode,
    DPSettings,
    ExecutionMode,
    group_clip_norms,
)
from covidct.privacy.step import DPGradient
from covidct.tfsetup import keras, tf
from tests.covidct.keys import known_secret

# (execution mode, how vectorized gets per-unit gradients): every path must compute the same sums
MODES = [
    (ExecutionMode.NANOBATCH, None),
    (ExecutionMode.VECTORIZED, "layerwise"),
    (ExecutionMode.VECTORIZED, "vectorized_map"),
]
MODE_IDS = ["nanobatch", "layerwise", "vectorized_map"]


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same")(inp)
    h = keras.layers.GroupNormalization(groups=2)(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.GlobalMaxPooling2D()(h)
    out = keras.layers.Dense(1)(h)
    return keras.Model(inp, out)


def unit_batch(n_units: int = 5, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((n_units, k, 8, 8, 1), dtype=np.float32)
    mask = np.ones((n_units, k), np.float32)
    mask[0, 2:] = 0  # a patient with fewer slices than k
    mask[3, 1:] = 0
    y = (np.arange(n_units) % 2).astype(np.float32)
    present = np.ones(n_units, np.float32)
    return x, mask, y, present


def dp_sum(model, settings, mode, batch, seed=0):
    mode, impl = mode if isinstance(mode, tuple) else (mode, None)
    dp = DPGradient(
        model, settings=settings, mode=mode, secret=known_secret(seed), vectorized_impl=impl
    )
    if mode is ExecutionMode.VECTORIZED:
        assert dp.vectorized_impl == (impl or "layerwise")
    dp.reset()
    dp.accumulate(*batch)
    return dp


def flat(grads) -> np.ndarray:
    return np.concatenate([np.asarray(g).ravel() for g in grads])


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_no_noise_no_clipping_equals_plain_gradient_of_mean_unit_loss(mode):
    model = tiny_model()
    x, mask, y, present = unit_batch()
    settings = DPSettings(clip_norm=None, noise_multiplier=0.0, expected_batch_size=len(y))
    got = dp_sum(model, settings, mode, (x, mask, y, present)).result(step=0)
    bce = keras.losses.BinaryCrossentropy(from_logits=True, reduction="none")
    with tf.GradientTape() as tape:
        losses = []
        for u in range(len(y)):
            logits = model(x[u], training=True)
            per = bce(np.full((x.shape[1], 1), y[u]), logits)
            losses.append(tf.reduce_sum(per * mask[u]) / mask[u].sum())
        loss = tf.add_n(losses) / len(y)
    want = tape.gradient(loss, model.trainable_variables)
    np.testing.assert_allclose(flat(got), flat(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_each_units_clipped_gradient_norm_is_at_most_c(mode):
    model = tiny_model()
    x, mask, y, _ = unit_batch()
    c = 0.01  # far below the raw norms, so every unit is clipped
    settings = DPSettings(clip_norm=c, noise_multiplier=0.0, expected_batch_size=1.0)
    for u in range(len(y)):
        present = np.zeros(len(y), np.float32)
        present[u] = 1.0
        norm = np.linalg.norm(
            flat(dp_sum(model, settings, mode, (x, mask, y, present)).clipped_sum())
        )
        assert norm <= c * (1 + 1e-5)
        assert norm == pytest.approx(c, rel=1e-4)  # clipping happened, it is not a zero vector


@pytest.mark.parametrize("impl", ["layerwise", "vectorized_map"])
def test_nanobatch_equals_vectorized_with_clipping(impl):
    model = tiny_model()
    batch = unit_batch(n_units=6)
    settings = DPSettings(clip_norm=0.05, noise_multiplier=0.0, expected_batch_size=4.2)
    a = dp_sum(model, settings, ExecutionMode.NANOBATCH, batch).result(step=3)
    b = dp_sum(model, settings, (ExecutionMode.VECTORIZED, impl), batch).result(step=3)
    np.testing.assert_allclose(flat(a), flat(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_padding_units_contribute_nothing(mode):
    model = tiny_model()
    x, mask, y, present = unit_batch()
    settings = DPSettings(clip_norm=0.1, noise_multiplier=0.0, expected_batch_size=3.0)
    full = dp_sum(model, settings, mode, (x[:3], mask[:3], y[:3], present[:3])).clipped_sum()
    padded_present = present.copy()
    padded_present[3:] = 0
    padded = dp_sum(model, settings, mode, (x, mask, y, padded_present))
    np.testing.assert_allclose(flat(padded.clipped_sum()), flat(full), rtol=1e-5, atol=1e-7)
    assert padded.units_in_batch == 3


def test_noise_std_matches_sigma_times_c_and_is_drawn_once_per_step():
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(64)]
    )
    sigma, c, expected = 1.7, 0.3, 10.0
    settings = DPSettings(clip_norm=c, noise_multiplier=sigma, expected_batch_size=expected)
    dp = DPGradient(model, settings=settings, mode=ExecutionMode.NANOBATCH, secret=known_secret(11))
    dp.reset()  # nothing accumulated: the result is pure noise / (q N)
    noise = flat(dp.result(step=5)) * expected
    assert noise.size > 4000
    ratio = noise.std() / (sigma * c)
    # the sample std of n normals has relative sd ~ 1/sqrt(2n) ~ 0.011 here: 5 sd tolerance
    assert abs(ratio - 1) < 0.055, ratio
    assert abs(noise.mean()) < 5 * sigma * c / np.sqrt(noise.size)
    again = flat(dp.result(step=5)) * expected
    other = flat(dp.result(step=6)) * expected
    np.testing.assert_array_equal(noise, again)  # a pure function of (seed, step)
    assert np.corrcoef(noise, other)[0, 1] < 0.1  # fresh noise each step


def test_nanobatch_and_vectorized_match_tensorflow_privacy_per_example_optimizer():
    from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras import DPKerasSGDOptimizer

    rng = np.random.default_rng(3)
    n, lr, c = 8, 0.5, 0.05
    x = rng.random((n, 8, 8, 1), dtype=np.float32)
    y = (rng.random(n) > 0.5).astype(np.float32)

    ref_model = tiny_model(seed=4)
    opt = DPKerasSGDOptimizer(
        l2_norm_clip=c, noise_multiplier=0.0, num_microbatches=n, learning_rate=lr
    )
    bce = keras.losses.BinaryCrossentropy(from_logits=True, reduction="none")
    with tf.GradientTape(persistent=True) as tape:
        per_example = bce(y[:, None], ref_model(x, training=True))
    opt.minimize(per_example, ref_model.trainable_variables, tape=tape)
    want = flat(ref_model.trainable_variables)

    for mode in MODES:
        model = tiny_model(seed=4)
        # slice units: k = 1 slice per unit, expected batch = n (tensorflow-privacy divides by n)
        settings = DPSettings(clip_norm=c, noise_multiplier=0.0, expected_batch_size=float(n))
        dp = dp_sum(
            model,
            settings,
            mode,
            (x[:, None], np.ones((n, 1), np.float32), y, np.ones(n, np.float32)),
        )
        keras.optimizers.SGD(learning_rate=lr).apply_gradients(
            zip(dp.result(step=0), model.trainable_variables, strict=True)
        )
        np.testing.assert_allclose(flat(model.trainable_variables), want, rtol=1e-5, atol=1e-6)


def test_group_clip_norms_square_sum_to_c_squared():
    for proportional in (False, True):
        norms = group_clip_norms([10, 300, 5], clip_norm=2.0, proportional=proportional)
        assert sum(n * n for n in norms) == pytest.approx(4.0)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_per_layer_clipping_bounds_each_group_and_the_total(mode):
    model = tiny_model()
    x, mask, y, _ = unit_batch()
    c = 0.02
    settings = DPSettings(
        clip_norm=c, noise_multiplier=0.0, expected_batch_size=1.0, clipping=ClippingMode.PER_LAYER
    )
    present = np.zeros(len(y), np.float32)
    present[1] = 1.0
    dp = dp_sum(model, settings, mode, (x, mask, y, present))
    grads = dp.clipped_sum()
    total = np.linalg.norm(flat(grads))
    assert total <= c * (1 + 1e-5)
    for members, cg in zip([m for m in _groups(dp)], dp.group_norms, strict=True):
        gnorm = np.linalg.norm(np.concatenate([np.asarray(grads[i]).ravel() for i in members]))
        assert gnorm <= cg * (1 + 1e-5)


def _groups(dp: DPGradient) -> list[list[int]]:
    out: dict[int, list[int]] = {}
    for i, g in enumerate(dp._group_of_var):
        out.setdefault(g, []).append(i)
    return [out[g] for g in sorted(out)]


def test_runner_and_xla_path_used_on_the_ipu_give_the_same_sums():
    """The IPU path compiles with XLA and calls every graph function through strategy.run."""
    from covidct.devices import DeviceChoice

    calls: list[str] = []

    class FakeIPUStrategy:
        def run(self, fn, args=()):
            calls.append(getattr(fn, "__name__", "fn"))
            return fn(*args)

    device = DeviceChoice("ipu", "test double", FakeIPUStrategy())
    assert device.jit_compile
    model = tiny_model()
    batch = unit_batch()
    # noise off: XLA's stateless generator draws other numbers from the same seed
    settings = DPSettings(clip_norm=0.05, noise_multiplier=0.0, expected_batch_size=4.0)
    want = dp_sum(model, settings, ExecutionMode.NANOBATCH, batch)
    dp = DPGradient(
        model,
        settings=settings,
        mode=ExecutionMode.NANOBATCH,
        secret=known_secret(0),
        jit_compile=device.jit_compile,
        runner=device.run,
    )
    dp.reset()
    dp.accumulate(*batch)
    np.testing.assert_allclose(
        flat(dp.clipped_sum()), flat(want.clipped_sum()), rtol=1e-4, atol=1e-7
    )
    opt = keras.optimizers.SGD(learning_rate=1.0)
    before = flat(model.trainable_variables)
    dp.apply(opt, step=2)
    np.testing.assert_allclose(
        flat(model.trainable_variables), before - flat(want.result(step=2)), rtol=1e-4, atol=1e-6
    )
    assert len(calls) == 3  # reset, accumulate, apply: nothing ran beside the strategy
    dp.run_batch([{0: batch}], opt, step=3)
    assert len(calls) == 4  # the chunk and the update: one launch, through the strategy


def test_apply_updates_with_the_noisy_mean_and_starts_the_next_batch_from_zero():
    model = tiny_model()
    batch = unit_batch()
    settings = DPSettings(clip_norm=0.05, noise_multiplier=0.7, expected_batch_size=4.0)
    dp = dp_sum(model, settings, ExecutionMode.NANOBATCH, batch, seed=3)
    want = flat(model.trainable_variables) - 0.5 * flat(dp.result(step=9))
    dp.apply(keras.optimizers.SGD(learning_rate=0.5), step=9)
    np.testing.assert_allclose(flat(model.trainable_variables), want, rtol=1e-5, atol=1e-6)
    assert dp.units_in_batch == 0 and not np.any(flat(dp.clipped_sum()))
    dp.reset()  # nothing to clear; the next batch accumulates from zero as before
    dp.accumulate(*batch)
    assert dp.units_in_batch == len(batch[2])


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_run_batch_fusing_the_last_chunk_with_apply_matches_the_separate_calls(mode):
    """run_batch launches the last chunk and the update as one graph: same weights, same
    optimizer state, same loss as reset / accumulate per chunk / apply, over two steps."""
    mode, impl = mode
    settings = DPSettings(clip_norm=0.05, noise_multiplier=0.7, expected_batch_size=4.0)
    x, mask, y, present = unit_batch(n_units=6)
    present[4] = 0.0  # a padding unit in the second chunk
    rounds = [
        {0: (x[:3], mask[:3], y[:3], present[:3])},
        {0: (x[3:], mask[3:], y[3:], present[3:])},
    ]
    runs = []
    for fused in (False, True):
        model = tiny_model()
        opt = keras.optimizers.SGD(learning_rate=0.5, momentum=0.9)
        dp = DPGradient(
            model, settings=settings, mode=mode, secret=known_secret(5), vectorized_impl=impl
        )
        losses = []
        for step in (3, 4):
            if fused:
                losses.append(dp.run_batch(rounds, opt, step=step, read_loss=True))
            else:
                dp.reset()
                for chunks in rounds:
                    dp.accumulate(*chunks[0])
                losses.append(dp.mean_unit_loss)
                dp.apply(opt, step=step)
            assert dp.units_in_batch == 0  # cleared for the next batch either way
        runs.append((flat(model.trainable_variables), losses))
    (want, want_losses), (got, got_losses) = runs
    assert not np.allclose(got, flat(tiny_model().trainable_variables))  # it did update
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    assert dp.run_batch(rounds, opt, step=5) is None  # the loss is read only when asked


def test_run_batch_with_no_units_applies_the_noise_alone():
    model = tiny_model()
    settings = DPSettings(clip_norm=0.05, noise_multiplier=0.7, expected_batch_size=4.0)
    dp = DPGradient(model, settings=settings, mode=ExecutionMode.NANOBATCH, secret=known_secret(2))
    dp.reset()
    want = flat(model.trainable_variables) - 0.5 * flat(dp.result(step=7))
    assert dp.run_batch([], keras.optimizers.SGD(learning_rate=0.5), step=7, read_loss=True) is None
    np.testing.assert_allclose(flat(model.trainable_variables), want, rtol=1e-5, atol=1e-7)


def test_proportional_split_gives_big_layers_more_of_c_and_still_bounds_the_total():
    model = tiny_model()
    x, mask, y, _ = unit_batch()
    c = 0.02
    settings = DPSettings(
        clip_norm=c,
        noise_multiplier=0.0,
        expected_batch_size=1.0,
        clipping=ClippingMode.PER_LAYER,
        proportional_split=True,
    )
    present = np.zeros(len(y), np.float32)
    present[2] = 1.0
    dp = dp_sum(model, settings, ExecutionMode.VECTORIZED, (x, mask, y, present))
    sizes = [sum(int(np.prod(dp.variables[i].shape)) for i in g) for g in _groups(dp)]
    assert sum(n * n for n in dp.group_norms) == pytest.approx(c * c)
    ratios = [n * n / s for n, s in zip(dp.group_norms, sizes, strict=True)]
    assert max(ratios) == pytest.approx(min(ratios))  # C_l^2 proportional to parameter count
    grads = dp.clipped_sum()
    assert np.linalg.norm(flat(grads)) <= c * (1 + 1e-5)
    for members, cg in zip(_groups(dp), dp.group_norms, strict=True):
        gnorm = np.linalg.norm(np.concatenate([np.asarray(grads[i]).ravel() for i in members]))
        assert gnorm <= cg * (1 + 1e-5)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_augmented_views_are_averaged_inside_the_unit_and_clipped_once(mode):
    """Augmentation multiplicity: a unit holding V views of its k slices (distributed.
    store_loader's view-major layout) contributes clip(mean of the views' gradients), one
    clipped vector, not V clipped vectors."""
    model = tiny_model()
    rng = np.random.default_rng(3)
    views, k, c = 3, 2, 0.01
    x = rng.random((1, views * k, 8, 8, 1), dtype=np.float32)
    mask, y, present = np.ones((1, views * k), np.float32), np.ones(1, np.float32), np.ones(1)
    present = present.astype(np.float32)
    raw = DPSettings(clip_norm=None, noise_multiplier=0.0, expected_batch_size=1.0)
    per_view = [
        flat(
            dp_sum(
                model, raw, mode, (x[:, v * k : (v + 1) * k], mask[:, :k], y, present)
            ).clipped_sum()
        )
        for v in range(views)
    ]
    mean = np.mean(per_view, axis=0)
    want = mean * min(1.0, c / np.linalg.norm(mean))
    clipped = DPSettings(clip_norm=c, noise_multiplier=0.0, expected_batch_size=1.0)
    got = flat(dp_sum(model, clipped, mode, (x, mask, y, present)).clipped_sum())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    separately = np.sum([g * min(1.0, c / np.linalg.norm(g)) for g in per_view], axis=0)
    assert np.linalg.norm(got - separately) > 0.1 * c  # not V units clipped one by one


def test_dpgradient_is_a_dp_step():
    from covidct.privacy.mechanism import DPStep

    settings = DPSettings(clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=4.0)
    mode = ExecutionMode.NANOBATCH
    dp = DPGradient(tiny_model(), settings=settings, mode=mode, secret=known_secret(0))
    assert isinstance(dp, DPStep)


def test_a_second_optimizer_gets_its_own_update_graph():
    """The traced update is tied to the optimizer it was traced with: a step with another
    optimizer updates that one, and the first is left alone."""
    model = tiny_model()
    settings = DPSettings(clip_norm=1.0, noise_multiplier=0.0, expected_batch_size=5.0)
    dp = DPGradient(model, settings=settings, mode=ExecutionMode.NANOBATCH, secret=known_secret(2))
    first, second = keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.1, momentum=0.9)
    for opt in (first, second):
        opt.build(model.trainable_variables)
    dp.run_batch([{0: unit_batch()}], first, step=0)
    dp.run_batch([{0: unit_batch(seed=1)}], second, step=1)
    dp.apply(second, step=2)
    assert int(first.iterations) == 1 and int(second.iterations) == 2
