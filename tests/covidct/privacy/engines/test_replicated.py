"""What changes with several replicas: sums kept per replica and summed on read, and the one
noise draw added by replica 0 only. (Two real replicas, in processes and as logical devices,
give one process's update: tests/covidct/test_distributed.py.)"""

from __future__ import annotations

import numpy as np

from covidct.privacy.engines.replicated import replica_noisy_mean, sum_on_read
from covidct.privacy.mechanism import DPSettings, noisy_mean
from covidct.tfsetup import tf

SETTINGS = DPSettings(clip_norm=1.0, noise_multiplier=2.0, expected_batch_size=4.0)


def test_sums_are_per_replica_and_summed_on_read_only_with_several_replicas():
    assert sum_on_read(1) == {}
    args = sum_on_read(2)
    assert args["synchronization"] == tf.VariableSynchronization.ON_READ
    assert args["aggregation"] == tf.VariableAggregation.SUM


def test_replica_zero_adds_the_steps_one_draw_and_the_result_is_the_noisy_mean():
    sums = [tf.constant([1.0, 2.0, 3.0]), tf.constant([[4.0]])]
    seed = tf.constant([7, 9], tf.int64)
    # the default strategy has one replica, number 0: it adds the draw, as with no strategy
    got = tf.distribute.get_strategy().run(
        lambda: replica_noisy_mean(sums, SETTINGS, seed)  # type: ignore[arg-type]
    )
    want = noisy_mean(sums, settings=SETTINGS, noise_seed=seed)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-6)
    plain = [s / SETTINGS.expected_batch_size for s in sums]
    assert not np.allclose(got[0].numpy(), plain[0].numpy())  # the noise is there
