"""Data-parallel DP-SGD across replicas: the cluster description and each replica's units.

Every worker computes the SAME global Poisson sample of a step (``PoissonSampler.sample`` is a
pure function of the run's secret key and the step; the chief's key reaches the other workers
over the strategy's collective, ``RunSecret.shared``), so every unit joins the batch at rate q
independently, whichever worker holds it. The sample is then split deterministically across
the ``R`` replicas of the whole cluster (``partition``); a worker loads only the units of its own
replicas. Every replica gets the same number of fixed-shape chunks (padded with ``present = 0``),
so the replicas run the same graph the same number of times. The clipped sums of all replicas are
all-reduced and noised once (``covidct.privacy.step.DPGradient``).

Multi-worker training reads the cluster from ``TF_CONFIG`` (TensorFlow's convention);
``set_tf_config`` writes it from ``host:port,host:port`` and a worker index.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from covidct.data.units import SliceStore, Units

if TYPE_CHECKING:
    from covidct.features.cache import FeatureStore

__all__ = [
    "Chunk",
    "ClusterSpec",
    "augment_shift",
    "cluster_from_env",
    "partition",
    "replica_chunks",
    "rounds",
    "set_tf_config",
    "store_loader",
    "tf_config",
]

# (x (U,k,H,W,1), mask (U,k), y (U,), present (U,)) float32: what DPGradient.accumulate takes
Chunk = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
# one unit's (x (k,H,W,1) in [0, 1], mask (k,), label)
UnitArrays = tuple[np.ndarray, np.ndarray, float]


@dataclass(frozen=True)
class ClusterSpec:
    """The workers of a multi-worker run and this process's place among them."""

    workers: tuple[str, ...]
    index: int

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def _parse_workers(workers: str | Sequence[str]) -> tuple[str, ...]:
    items = workers.split(",") if isinstance(workers, str) else list(workers)
    out = tuple(w.strip() for w in items if w.strip())
    for w in out:
        host, sep, port = w.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"worker {w!r} is not host:port")
    if len(set(out)) != len(out):
        raise ValueError(f"a worker is listed twice in {','.join(out)}")
    return out


def tf_config(workers: str | Sequence[str], index: int) -> dict[str, object]:
    """TensorFlow's ``TF_CONFIG`` for worker ``index`` of ``workers`` ("host:port,host:port")."""
    names = _parse_workers(workers)
    if not names:
        raise ValueError("no workers given")
    if not 0 <= index < len(names):
        raise ValueError(f"worker index {index} is outside 0..{len(names) - 1}")
    return {"cluster": {"worker": list(names)}, "task": {"type": "worker", "index": index}}


def set_tf_config(workers: str | Sequence[str], index: int) -> ClusterSpec:
    """Write ``TF_CONFIG`` (before any TensorFlow op runs in the process) and return the spec."""
    cfg = tf_config(workers, index)
    os.environ["TF_CONFIG"] = json.dumps(cfg)
    return ClusterSpec(_parse_workers(workers), index)


def cluster_from_env() -> ClusterSpec | None:
    """The cluster ``TF_CONFIG`` describes, or None when it is unset or names one worker.

    Only ``worker`` tasks are supported (worker 0 is the chief: it writes the run's files).
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
        cluster = cfg.get("cluster", {})
        task = cfg.get("task", {})
        workers = _parse_workers(cluster.get("worker", []))
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"TF_CONFIG is not valid: {exc}") from exc
    extra = sorted(set(cluster) - {"worker"})
    if extra or kind != "worker":
        raise ValueError(
            f"TF_CONFIG: only 'worker' tasks are supported (got cluster {sorted(cluster)}, "
            f"task type {kind!r})"
        )
    if len(workers) <= 1:
        return None
    if not 0 <= index < len(workers):
        raise ValueError(f"TF_CONFIG: task index {index} is outside 0..{len(workers) - 1}")
    return ClusterSpec(workers, index)


def partition(chosen: np.ndarray, num_replicas: int) -> list[np.ndarray]:
    """Split one step's sampled unit indices into ``num_replicas`` contiguous parts whose sizes
    differ by at most one (replica r gets part r). Deterministic: every worker gets the same."""
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    return [np.asarray(p) for p in np.array_split(np.asarray(chosen), num_replicas)]


def rounds(n_chosen: int, num_replicas: int, chunk: int) -> int:
    """How many chunks EVERY replica processes for a step of ``n_chosen`` units."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return math.ceil(math.ceil(n_chosen / num_replicas) / chunk) if n_chosen else 0


def replica_chunks(
    chosen: np.ndarray,
    load: Callable[[int], UnitArrays],
    *,
    chunk: int,
    num_replicas: int,
    replica_ids: Sequence[int],
    shape: tuple[int, ...],
) -> Iterator[dict[int, Chunk]]:
    """Yield, round by round, one fixed-shape chunk for each of this worker's replicas.

    Args:
        chosen: the step's GLOBAL sample of unit indices (identical on every worker).
        load: a unit's arrays (``store_loader``); called only for this worker's units.
        chunk: units per chunk.
        num_replicas: replicas in the whole cluster (``strategy.num_replicas_in_sync``).
        replica_ids: the global ids of this worker's replicas.
        shape: (k, H, W, 1), one unit's image block.

    Yields:
        {replica id: (x, mask, y, present)}; the same number of rounds on every worker
        (``rounds``), padding units have ``present = 0``.
    """
    parts = partition(chosen, num_replicas)
    k = shape[0]
    for r in range(rounds(len(chosen), num_replicas, chunk)):
        out: dict[int, Chunk] = {}
        for rid in replica_ids:
            part = parts[rid][r * chunk : (r + 1) * chunk]
            x = np.zeros((chunk, *shape), np.float32)
            mask = np.zeros((chunk, k), np.float32)
            y = np.zeros(chunk, np.float32)
            present = np.zeros(chunk, np.float32)
            for j, u in enumerate(part):
                x[j], mask[j], y[j] = load(int(u))
                present[j] = 1.0
            out[rid] = (x, mask, y, present)
        yield out


def augment_shift(size: int) -> int:
    """The largest shift (pixels) of training augmentation for ``size``-pixel slices."""
    return max(1, round(size / 24))


def store_loader(
    units: Units,
    chosen: np.ndarray,
    store: SliceStore | FeatureStore,
    *,
    k: int,
    rng: np.random.Generator,
    augment: bool = False,
    views: int = 1,
) -> tuple[Callable[[int], UnitArrays], tuple[int, ...]]:
    """A ``load`` for ``replica_chunks`` over a prepared dataset, and the unit shape.

    ``store`` gives each slice's model input: a ``SliceStore`` the slice (size, size, 1) in
    [0, 1], a ``FeatureStore`` its cached fixed features.

    Which k slices a unit with more than k contributes is drawn HERE, for the whole global
    sample in its order, exactly as ``covidct.data.units.unit_chunks`` draws them: the choice
    does not depend on how many replicas share the batch, and one replica gets the same
    slices (and chunks) as ``unit_chunks``.

    ``augment`` (slices only): each slice is flipped left-right with probability 1/2 and
    shifted (cyclically) by up to ``augment_shift(size)`` pixels each way, drawn here too (after
    the unit's slice choice). It changes only what a unit's own gradient is computed on: the
    unit is still clipped as one, so the privacy guarantee is unchanged.

    ``views`` > 1 (with ``augment``; augmentation multiplicity): the unit holds ``views``
    independently augmented copies of its slices, view-major (slots ``v*k .. v*k+k-1`` are view
    v), so its loss averages over every view before the unit is clipped. The unit's shape
    becomes (views*k, ...).
    """
    shape = tuple(store.inputs([units.slices[0][0]]).shape[1:])  # one unit's slice, as read
    if augment and (len(shape) != 3 or shape[-1] != 1):
        raise ValueError(f"augmentation flips and shifts slices; these inputs are {shape}")
    if views < 1 or (views > 1 and not augment):
        raise ValueError(f"views={views} needs augment and must be at least 1")
    shift = augment_shift(shape[0])
    refs_of: dict[int, list[tuple[str, int]]] = {}
    moves_of: dict[int, list[tuple[bool, int, int]]] = {}
    for u in chosen:
        refs = units.slices[int(u)]
        if len(refs) > k:
            refs = [refs[i] for i in np.sort(rng.choice(len(refs), size=k, replace=False))]
        refs_of[int(u)] = refs
        if augment:  # view-major: views * len(refs) moves
            flips = rng.random(views * len(refs)) < 0.5
            shifts = rng.integers(-shift, shift + 1, size=(views * len(refs), 2))
            moves_of[int(u)] = [
                (bool(f), int(dy), int(dx)) for f, (dy, dx) in zip(flips, shifts, strict=True)
            ]

    def load(u: int) -> UnitArrays:
        x = np.zeros((views * k, *shape), np.float32)
        mask = np.zeros(views * k, np.float32)
        refs = refs_of[u]
        n = len(refs)
        if refs:
            base = store.inputs(refs)
            for v in range(views):
                x[v * k : v * k + n] = base
                mask[v * k : v * k + n] = 1.0
        for i, (flip, dy, dx) in enumerate(moves_of.get(u, [])):
            s = (i // n) * k + i % n
            img = x[s, :, :, 0]
            x[s, :, :, 0] = np.roll(img[:, ::-1] if flip else img, (dy, dx), axis=(0, 1))
        return x, mask, float(units.labels[u])

    return load, (views * k, *shape)
