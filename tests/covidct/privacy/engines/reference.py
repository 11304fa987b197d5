"""What every engine must add for a chunk, computed without any engine code: each present unit's
gradient from its own tape (eager), its mean-BCE unit loss written out by hand, clipped in numpy
by min(1, C / ||g||), summed."""

from __future__ import annotations

import numpy as np

from covidct.privacy.engines import make_engine
from covidct.privacy.mechanism import Clipper, DPSettings
from covidct.privacy.modes import ExecutionMode, UnitLoss
from covidct.tfsetup import tf
from tests.covidct.privacy.test_step import tiny_model, unit_batch


def batch() -> tuple[np.ndarray, ...]:
    """Five units of up to three slices; unit 2 is padding (not present)."""
    x, mask, y, present = unit_batch(n_units=5, k=3, seed=1)
    present[2] = 0.0
    return x, mask, y, present


def unit_gradients(model, chunk) -> list[tuple[list[np.ndarray], float]]:
    x, mask, y, _ = chunk
    out = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            logits = model(x[i], training=True)[:, 0]
            labels = tf.fill(tf.shape(logits), float(y[i]))
            bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
            loss = tf.reduce_sum(bce * mask[i]) / float(mask[i].sum())
        grads = tape.gradient(loss, model.trainable_variables)
        out.append(([np.asarray(g, np.float64) for g in grads], float(loss)))
    return out


def reference_sums(model, chunk, clip_norm: float | None) -> tuple[list[np.ndarray], float]:
    present = chunk[3]
    sums = [np.zeros(v.shape, np.float64) for v in model.trainable_variables]
    total = 0.0
    for (grads, loss), here in zip(unit_gradients(model, chunk), present, strict=True):
        if not here:
            continue
        norm = np.sqrt(sum(float((g**2).sum()) for g in grads))
        factor = 1.0 if clip_norm is None else min(1.0, clip_norm / norm)
        sums = [s + factor * g for s, g in zip(sums, grads, strict=True)]
        total += loss
    return sums, total


def median_norm(model, chunk) -> float:
    """A clip norm that clips about half the units and leaves the rest alone."""
    norms = [
        np.sqrt(sum(float((g**2).sum()) for g in gs)) for gs, _ in unit_gradients(model, chunk)
    ]
    return float(np.median(norms))


def engine_sums(
    mode: ExecutionMode, clip_norm: float | None, impl: str | None = None
) -> tuple[tuple[list[np.ndarray], float], tuple[list[np.ndarray], float], str]:
    """(the engine's sums and loss, the reference's, the engine's name) on one chunk."""
    model, chunk = tiny_model(seed=4), batch()
    c = median_norm(model, chunk) if clip_norm == "median" else clip_norm
    settings = DPSettings(clip_norm=c, noise_multiplier=0.0, expected_batch_size=4.0)
    variables = model.trainable_variables
    clipper = Clipper(settings, variables, [list(range(len(variables)))])
    engine, _ = make_engine(
        model, variables, clipper=clipper, mode=mode, unit_loss=UnitLoss.MEAN, vectorized_impl=impl
    )
    acc = [tf.Variable(tf.zeros_like(v)) for v in variables]
    loss = tf.Variable(0.0)
    # traced, as DPGradient runs it
    tf.function(engine.add_chunk)(acc, loss, *(tf.constant(a) for a in chunk))
    got = ([a.numpy() for a in acc], float(loss.numpy()))
    return got, reference_sums(model, chunk, c), engine.name


def assert_same(got, want) -> None:
    for a, b in zip(got[0], want[0], strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
