"""Several replicas (MirroredStrategy, MultiWorkerMirroredStrategy): each replica clips and
sums its own units into variables that are summed on read; the update all-reduces the replicas'
sums by SUM with the noise added on replica 0 only, so it is (sum over all units + ONE draw of
N(0, sigma^2 C^2)) / (q N), exactly as with one replica."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from covidct.privacy.mechanism import DPSettings, noisy_mean
from covidct.tfsetup import tf


def sum_on_read(num_replicas: int) -> dict[str, Any]:
    """tf.Variable arguments of the batch's sums: with several replicas each adds to its own
    copy, and a cross-replica read gives the SUM over all replicas of all workers (under
    MultiWorkerMirroredStrategy a collective: every worker must read together)."""
    if num_replicas == 1:
        return {}
    return {
        "synchronization": tf.VariableSynchronization.ON_READ,
        "aggregation": tf.VariableAggregation.SUM,
    }


def distribute(strategy: Any, chunks: Mapping[int, Sequence[object]]) -> Any:
    """One chunk per replica of this worker (``{global replica id: (x, mask, y, present)}``)
    as distributed values for ``strategy.run``."""

    def value(ctx: tf.distribute.experimental.ValueContext) -> tuple[tf.Tensor, ...]:
        chunk = chunks[ctx.replica_id_in_sync_group]
        return tuple(tf.convert_to_tensor(a, tf.float32) for a in chunk)

    return strategy.experimental_distribute_values_from_function(value)


def replica_noisy_mean(
    sums: Sequence[tf.Variable], settings: DPSettings, noise_seed: tf.Tensor
) -> list[tf.Tensor]:
    """In each replica: all-reduce (local clipped sum + noise on replica 0 only) by SUM; the
    result, identical on every replica, has the noise of one logical batch, never one per
    replica."""
    ctx = tf.distribute.get_replica_context()
    first = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), tf.float32)
    local = noisy_mean(sums, settings=settings, noise_seed=noise_seed, noise_weight=first)
    return list(ctx.all_reduce(tf.distribute.ReduceOp.SUM, local))
