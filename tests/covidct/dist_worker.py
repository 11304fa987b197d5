"""One DP step under a given number of replicas, for tests/covidct/test_distributed.py.

Imported by the test for the one-process reference; run as a script for the replicated runs
(logical CPU devices and MultiWorkerMirroredStrategy must be set up before TensorFlow starts,
so they need a fresh process)::

    python tests/covidct/dist_worker.py OUT.npz mirrored 2
    python tests/covidct/dist_worker.py OUT.npz worker 127.0.0.1:P0,127.0.0.1:P1 INDEX
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

N_UNITS, K, CHUNK = 7, 3, 2  # 7 units over 2 replicas: 4 + 3, two padded chunks each
SIGMA, CLIP, QN, LR = 1.3, 0.05, 5.0, 1.0
MODES = ("nanobatch", "vectorized")


def unit_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((N_UNITS, K, 8, 8, 1), dtype=np.float32)
    mask = np.ones((N_UNITS, K), np.float32)
    mask[1, 2:] = 0
    mask[4, 1:] = 0
    y = (np.arange(N_UNITS) % 2).astype(np.float32)
    return x, mask, y


def _tiny_model(keras: Any) -> Any:
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same")(inp)
    h = keras.layers.GroupNormalization(groups=2)(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.GlobalMaxPooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(1)(h))


def _wide_model(keras: Any) -> Any:
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(64)]
    )


def run(device: Any = None) -> dict[str, np.ndarray]:
    """Per execution mode: the update of one step with clipping (noise off, then on), the
    global units/loss/clipped sum read before applying, and a pure-noise update."""
    from covidct.distributed import replica_chunks
    from covidct.privacy.mechanism import DPSettings, ExecutionMode
    from covidct.privacy.step import DPGradient
    from covidct.tfsetup import keras, tf
    from tests.covidct.keys import known_secret

    strategy = device.strategy if device is not None else tf.distribute.get_strategy()
    n_rep = device.num_replicas if device is not None else 1
    ids = device.replica_ids if device is not None else (0,)
    x, mask, y = unit_arrays()
    chosen = np.arange(N_UNITS)

    def load(u: int) -> tuple[np.ndarray, np.ndarray, float]:
        return x[u], mask[u], float(y[u])

    out: dict[str, np.ndarray] = {}
    for mode in MODES:
        for sigma in (0.0, SIGMA):
            with strategy.scope():
                model = _tiny_model(keras)
                opt = keras.optimizers.SGD(learning_rate=LR)
                opt.build(model.trainable_variables)
                dp = DPGradient(
                    model,
                    settings=DPSettings(
                        clip_norm=CLIP, noise_multiplier=sigma, expected_batch_size=QN
                    ),
                    mode=ExecutionMode(mode),
                    secret=known_secret(5),
                    runner=device.run if device is not None else None,
                )
            before = _flat(model.trainable_variables)
            dp.reset()
            for chunks in replica_chunks(
                chosen, load, chunk=CHUNK, num_replicas=n_rep, replica_ids=ids, shape=(K, 8, 8, 1)
            ):
                dp.accumulate_replicas(chunks)
            tag = f"{mode}_{'noise' if sigma else 'clean'}"
            out[f"{tag}_units"] = np.array(dp.units_in_batch)
            out[f"{tag}_loss"] = np.array(dp.mean_unit_loss)
            out[f"{tag}_sum"] = _flat(dp.clipped_sum())
            out[f"{tag}_result"] = _flat(dp.result(step=3))  # read across replicas
            dp.apply(opt, step=3)
            out[f"{tag}_update"] = _flat(model.trainable_variables) - before
            out[f"{tag}_after_units"] = np.array(dp.units_in_batch)  # apply cleared the sums
    # nothing accumulated: the update is -LR * noise / (q N), on 4160 parameters
    with strategy.scope():
        model = _wide_model(keras)
        opt = keras.optimizers.SGD(learning_rate=LR)
        opt.build(model.trainable_variables)
        dp = DPGradient(
            model,
            settings=DPSettings(clip_norm=CLIP, noise_multiplier=SIGMA, expected_batch_size=QN),
            mode=ExecutionMode.NANOBATCH,
            secret=known_secret(9),
            runner=device.run if device is not None else None,
        )
    before = _flat(model.trainable_variables)
    dp.reset()
    dp.apply(opt, step=11)
    out["noise_update"] = _flat(model.trainable_variables) - before
    out["num_replicas"] = np.array(n_rep)
    x0, m0, y0 = x[:1], mask[:1], y[:1]
    try:
        dp.accumulate(x0, m0, y0, np.ones(1, np.float32))
        refused = False
    except RuntimeError:
        refused = True
    out["refused_plain_accumulate"] = np.array(refused)
    return out


def _flat(values: Any) -> np.ndarray:
    return np.concatenate([np.asarray(v).ravel() for v in values])


def main(argv: list[str]) -> None:
    path, kind = Path(argv[0]), argv[1]
    from covidct.devices import choose_device

    if kind == "mirrored":
        device = choose_device(prefer="cpu", local_devices=int(argv[2]))
    else:
        device = choose_device(prefer="cpu", workers=argv[2], worker_index=int(argv[3]))
    from covidct.tfsetup import tf

    tf.config.experimental.enable_op_determinism()
    result = run(device)
    result["is_chief"] = np.array(device.is_chief)
    result["replica_ids"] = np.array(device.replica_ids)
    np.savez(path, **result)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(sys.argv[1:])
