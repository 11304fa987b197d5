"""Data-parallel DP-SGD: replicas (logical CPU devices, or worker processes on 127.0.0.1) give
the update of one process; the noise is drawn once per logical batch, not once per replica."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covidct.data.units import SliceStore, Units, unit_chunks
from covidct.distributed import (
    augment_shift,
    cluster_from_env,
    partition,
    replica_chunks,
    rounds,
    set_tf_config,
    store_loader,
    tf_config,
)
from tests.covidct import dist_worker

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(dist_worker.__file__).resolve()
TIMEOUT = 300


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _spawn(out: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_all(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, str]:
    """Wait for every process (killing the rest when one hangs); their logs by name."""
    logs: dict[str, str] = {}
    try:
        for name, proc in procs.items():
            try:
                out, _ = proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            logs[name] = out.decode(errors="replace")[-4000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return logs


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    """The one-process reference and the same step on 2 replicas, both ways (run together)."""
    tmp = tmp_path_factory.mktemp("dist")
    workers = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    procs = {
        "mirrored": _spawn(tmp / "mirrored.npz", "mirrored", "2"),
        "worker0": _spawn(tmp / "worker0.npz", "worker", workers, "0"),
        "worker1": _spawn(tmp / "worker1.npz", "worker", workers, "1"),
    }
    try:
        out = {"single": dist_worker.run()}  # in this process, while the others run
    finally:
        logs = _wait_all(procs)
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name} failed:\n{logs[name]}"
        out[name] = dict(np.load(tmp / f"{name}.npz"))
    return out


REPLICATED = ["mirrored", "worker0", "worker1"]


@pytest.mark.slow
@pytest.mark.parametrize("name", REPLICATED)
@pytest.mark.parametrize("mode", dist_worker.MODES)
def test_two_replicas_give_the_update_of_one_process_without_noise(replicated, name, mode):
    one, two = replicated["single"], replicated[name]
    assert two["num_replicas"] == 2
    tag = f"{mode}_clean"
    assert two[f"{tag}_units"] == one[f"{tag}_units"] == dist_worker.N_UNITS  # global counts
    assert two[f"{tag}_loss"] == pytest.approx(float(one[f"{tag}_loss"]), rel=1e-6)
    np.testing.assert_allclose(two[f"{tag}_sum"], one[f"{tag}_sum"], rtol=1e-5, atol=1e-8)
    assert np.abs(one[f"{tag}_update"]).max() > 1e-3  # the step moved the weights
    np.testing.assert_allclose(two[f"{tag}_update"], one[f"{tag}_update"], rtol=1e-5, atol=1e-7)
    assert two[f"{tag}_after_units"] == 0  # apply cleared every replica's sums


@pytest.mark.slow
@pytest.mark.parametrize("name", REPLICATED)
@pytest.mark.parametrize("mode", dist_worker.MODES)
def test_noise_is_drawn_once_per_logical_batch_not_per_replica(replicated, name, mode):
    """Same (seed, step) noise as one process: one draw in the all-reduced sum."""
    one, two = replicated["single"], replicated[name]
    tag = f"{mode}_noise"
    np.testing.assert_allclose(two[f"{tag}_update"], one[f"{tag}_update"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(two[f"{tag}_result"], one[f"{tag}_result"], rtol=1e-5, atol=1e-7)
    clean = one[f"{mode}_clean_update"]
    assert np.abs(two[f"{tag}_update"] - clean).max() > 3 * np.abs(clean).max()  # noise is on


@pytest.mark.slow
@pytest.mark.parametrize("name", REPLICATED)
def test_noise_std_is_sigma_c_not_sqrt_replicas_times_it(replicated, name):
    d = dist_worker
    noise = -replicated[name]["noise_update"] / d.LR * d.QN  # nothing accumulated: pure noise
    assert noise.size > 4000
    ratio = noise.std() / (d.SIGMA * d.CLIP)
    # sd of the sample std ~ 1/sqrt(2n) ~ 0.011: 5 sd tolerance; sqrt(2) would be far outside
    assert abs(ratio - 1) < 0.055, ratio
    np.testing.assert_allclose(
        replicated[name]["noise_update"], replicated["single"]["noise_update"], rtol=1e-6
    )


@pytest.mark.slow
def test_only_worker_zero_is_chief_and_the_workers_hold_different_replicas(replicated):
    w0, w1 = replicated["worker0"], replicated["worker1"]
    assert bool(w0["is_chief"]) and not bool(w1["is_chief"])
    assert list(w0["replica_ids"]) == [0] and list(w1["replica_ids"]) == [1]
    assert list(replicated["mirrored"]["replica_ids"]) == [0, 1]


# ---- the split of a step's sample across replicas (no TensorFlow) ---------------------------


@pytest.mark.parametrize("n_rep", [1, 2, 3, 5])
def test_every_sampled_unit_goes_to_exactly_one_replica_in_equally_many_chunks(n_rep):
    chosen = np.array([2, 3, 5, 8, 13, 21, 34])
    load = lambda u: (np.full((1, 2, 2, 1), u, np.float32), np.ones(1, np.float32), u % 2)  # noqa: E731
    seen: list[int] = []
    n_rounds = 0
    for per_replica in replica_chunks(
        chosen, load, chunk=2, num_replicas=n_rep, replica_ids=range(n_rep), shape=(1, 2, 2, 1)
    ):
        n_rounds += 1
        assert sorted(per_replica) == list(range(n_rep))
        for x, _, y, present in per_replica.values():
            assert x.shape == (2, 1, 2, 2, 1) and present.shape == (2,)
            real = present == 1
            seen += [int(v) for v in x[real, 0, 0, 0, 0]]
            assert not x[~real].any() and not y[~real].any()
    assert n_rounds == rounds(len(chosen), n_rep, 2)
    assert sorted(seen) == list(chosen)
    sizes = [len(p) for p in partition(chosen, n_rep)]
    assert max(sizes) - min(sizes) <= 1


def test_a_worker_only_loads_its_own_replicas_units():
    chosen = np.arange(10)
    loaded: list[int] = []

    def load(u):
        loaded.append(u)
        return np.zeros((1, 1, 1, 1), np.float32), np.ones(1, np.float32), 0.0

    ids = [2, 3]  # worker 1 of 2, two replicas each
    for per_replica in replica_chunks(
        chosen, load, chunk=4, num_replicas=4, replica_ids=ids, shape=(1, 1, 1, 1)
    ):
        assert sorted(per_replica) == ids
    parts = partition(chosen, 4)
    assert sorted(loaded) == sorted(int(u) for r in ids for u in parts[r])
    assert rounds(0, 4, 4) == 0


def _store(tmp_path: Path) -> tuple[Units, SliceStore]:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.integers(0, 256, (9, 4, 4), dtype=np.uint8))
    slices = [[("a.npy", i) for i in range(j, 9, 3)] for j in range(3)]  # 3 units x 3 slices
    slices.append([("a.npy", 0)])
    units = Units(
        ids=["p0", "p1", "p2", "p3"],
        patients=["p0", "p1", "p2", "p3"],
        labels=np.array([0, 1, 1, 0], np.float32),
        slices=slices,
    )
    return units, SliceStore(tmp_path)


def test_one_replica_gets_exactly_the_chunks_of_unit_chunks(tmp_path):
    units, store = _store(tmp_path)
    chosen = np.array([0, 1, 2, 3])
    want = list(unit_chunks(units, chosen, store, k=2, chunk=3, rng=np.random.default_rng(7)))
    load, shape = store_loader(units, chosen, store, k=2, rng=np.random.default_rng(7))
    got = [
        c[0]
        for c in replica_chunks(chosen, load, chunk=3, num_replicas=1, replica_ids=[0], shape=shape)
    ]
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)


def test_slice_choice_does_not_depend_on_the_number_of_replicas(tmp_path):
    units, store = _store(tmp_path)
    chosen = np.array([0, 1, 2, 3])

    def by_label_and_image(n_rep, augment=False):
        load, shape = store_loader(
            units, chosen, store, k=2, rng=np.random.default_rng(7), augment=augment
        )
        rows = []
        for per in replica_chunks(
            chosen, load, chunk=1, num_replicas=n_rep, replica_ids=range(n_rep), shape=shape
        ):
            for x, mask, y, present in per.values():
                if present[0]:
                    rows.append((float(y[0]), x[0].tobytes(), mask[0].tobytes()))
        return sorted(rows)

    assert by_label_and_image(1) == by_label_and_image(3)
    assert by_label_and_image(1, augment=True) == by_label_and_image(3, augment=True)


def test_augmentation_flips_and_shifts_each_slice_within_bounds(tmp_path):
    units, store = _store(tmp_path)
    chosen = np.array([0, 1, 2, 3])
    plain, shape = store_loader(units, chosen, store, k=2, rng=np.random.default_rng(7))
    size = shape[1]
    m = augment_shift(size)
    moved = 0
    for seed in range(5):
        aug, _ = store_loader(
            units, chosen, store, k=2, rng=np.random.default_rng(seed), augment=True
        )
        again, _ = store_loader(
            units, chosen, store, k=2, rng=np.random.default_rng(seed), augment=True
        )
        for u in chosen:
            x, mask, y = aug(int(u))
            np.testing.assert_array_equal(x, again(int(u))[0])  # a function of the rng
            assert y == plain(int(u))[2]
            for s in range(int(mask.sum())):
                img = x[s, :, :, 0]
                # some slice of this unit, flipped or not, rolled by at most m pixels
                sources = [
                    store.get(f, i).astype(np.float32) / 255.0 for f, i in units.slices[int(u)]
                ]
                hits = [
                    (flip, dy, dx)
                    for src in sources
                    for flip in (False, True)
                    for dy in range(-m, m + 1)
                    for dx in range(-m, m + 1)
                    if np.array_equal(
                        img, np.roll(src[:, ::-1] if flip else src, (dy, dx), axis=(0, 1))
                    )
                ]
                assert hits, f"unit {u} slice {s} is not a flip/shift of its own slices"
                moved += (False, 0, 0) not in hits
    assert moved > 0


# ---- the cluster description ----------------------------------------------------------------


def test_tf_config_from_workers_and_index(monkeypatch):
    cfg = tf_config("10.0.0.1:2222, 10.0.0.2:2222", 1)
    assert cfg == {
        "cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
        "task": {"type": "worker", "index": 1},
    }
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster_from_env() is None
    spec = set_tf_config(["h:1", "h:2", "h:3"], 0)
    assert spec.is_chief and json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0
    assert cluster_from_env() == spec
    set_tf_config("h:1", 0)
    assert cluster_from_env() is None  # one worker: no multi-worker strategy
    for bad, index in (("h:1,h:2", 2), ("h1,h:2", 0), ("h:1,h:1", 1), ("", 0)):
        with pytest.raises(ValueError):
            tf_config(bad, index)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["h:1"], "worker": ["h:2"]}}))
    with pytest.raises(ValueError, match="only 'worker'"):
        cluster_from_env()


@pytest.mark.slow
@pytest.mark.parametrize("name", REPLICATED)
def test_one_chunk_for_several_replicas_is_refused(replicated, name):
    """accumulate() under 2 replicas would feed the same chunk to both (counted twice)."""
    assert bool(replicated[name]["refused_plain_accumulate"])
    assert not bool(replicated["single"]["refused_plain_accumulate"])


def test_augmentation_multiplicity_holds_views_of_the_same_slices_view_major(tmp_path):
    units, store = _store(tmp_path)
    chosen = np.array([0, 1, 2, 3])
    views, k = 3, 2
    load, shape = store_loader(
        units, chosen, store, k=k, rng=np.random.default_rng(4), augment=True, views=views
    )
    assert shape[0] == views * k
    m = augment_shift(shape[1])

    def sources_of(img, sources):
        return {
            i
            for i, src in enumerate(sources)
            for f in (False, True)
            for dy in range(-m, m + 1)
            for dx in range(-m, m + 1)
            if np.array_equal(img, np.roll(src[:, ::-1] if f else src, (dy, dx), (0, 1)))
        }

    differ = 0
    for u in chosen:
        x, mask, y = load(int(u))
        assert y == units.labels[int(u)]
        n = min(k, len(units.slices[int(u)]))
        np.testing.assert_array_equal(mask, np.tile([1.0] * n + [0.0] * (k - n), views))
        sources = [store.get(f, i).astype(np.float32) / 255.0 for f, i in units.slices[int(u)]]
        for s in range(n):
            # every view of slot s is a flip/shift of one and the same slice of this unit
            common = set.intersection(
                *(sources_of(x[v * k + s, :, :, 0], sources) for v in range(views))
            )
            assert common, f"unit {u} slot {s}: the views are not of one slice"
            differ += sum(not np.array_equal(x[v * k + s], x[s]) for v in range(1, views))
    assert differ > 0  # the views are drawn independently, not copies of view 0
    with pytest.raises(ValueError, match="augment"):
        store_loader(units, chosen, store, k=k, rng=np.random.default_rng(4), views=2)


def test_one_view_draws_exactly_what_plain_augmentation_draws(tmp_path):
    units, store = _store(tmp_path)
    chosen = np.array([0, 1, 2, 3])
    a, _ = store_loader(units, chosen, store, k=2, rng=np.random.default_rng(9), augment=True)
    b, _ = store_loader(
        units, chosen, store, k=2, rng=np.random.default_rng(9), augment=True, views=1
    )
    for u in chosen:
        np.testing.assert_array_equal(a(int(u))[0], b(int(u))[0])
