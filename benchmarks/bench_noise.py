"""What the secret, attack-resistant noise costs: one noise draw per logical batch, side by side.

Variants, each a compiled graph over the trainable variables of the given model:
- ``single``: std * one stateless normal draw per value (what covidct did before its noise moved
  to secret keys);
- ``covidct``: ``mechanism.noisy_mean`` as training calls it: a per-step secret seed fed as a
  graph input, folded in per variable, each value the sum of NOISE_DRAWS draws (halved);
and, for scale, one whole DP step (``DPGradient.run_batch``, auto execution) on the same model.

Prints one JSON object (milliseconds per call, medians of interleaved rounds):

    .venv/bin/python benchmarks/bench_noise.py [--size 64] [--batch 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gn_cnn_small")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np

    from covidct.devices import resolve_execution
    from covidct.models import build_model
    from covidct.privacy.mechanism import DPSettings, noisy_mean
    from covidct.privacy.modes import ExecutionMode
    from covidct.privacy.secret import NOISE_DRAWS, RunSecret
    from covidct.privacy.step import DPGradient
    from covidct.tfsetup import keras, tf

    model = build_model(args.model, input_size=args.size, seed=0)
    variables = list(model.trainable_variables)
    n_params = int(sum(int(tf.size(v)) for v in variables))
    settings = DPSettings(clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=args.batch)
    secret = RunSecret.draw()

    @tf.function
    def single(step: tf.Tensor) -> list[tf.Tensor]:
        out = []
        for i, v in enumerate(variables):
            key = tf.stack([tf.constant(0, tf.int64), step * 100_003 + i])
            noise = tf.random.stateless_normal(tf.shape(v), seed=key)
            out.append((tf.zeros_like(v) + noise) / settings.expected_batch_size)
        return out

    @tf.function
    def covidct(noise_seed: tf.Tensor) -> list[tf.Tensor]:
        return noisy_mean(
            [tf.zeros_like(v) for v in variables], settings=settings, noise_seed=noise_seed
        )

    dp = DPGradient(
        model,
        settings=settings,
        mode=resolve_execution(ExecutionMode.AUTO, "cpu"),
        secret=secret,
    )
    opt = keras.optimizers.SGD(learning_rate=0.01)
    opt.build(variables)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 1, args.size, args.size, 1), dtype=np.float32)
    chunk = (x, np.ones((args.batch, 1), np.float32), np.ones(args.batch, np.float32))
    rounds = [{0: (*chunk, np.ones(args.batch, np.float32))}]

    counter = [0]

    def run_single() -> None:
        single(tf.constant(counter[0], tf.int64))

    def run_covidct() -> None:
        covidct(tf.convert_to_tensor(secret.noise_seed(counter[0]), tf.int64))

    def run_step() -> None:
        dp.run_batch(rounds, opt, step=counter[0])

    variants = {"single_draw": run_single, "covidct_noise": run_covidct, "dp_step": run_step}
    for fn in variants.values():  # trace and warm up
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(args.calls):
                counter[0] += 1
                fn()
            times[name].append(1000 * (time.perf_counter() - t0) / args.calls)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": args.model,
        "image_size": args.size,
        "batch": args.batch,
        "parameters": n_params,
        "noise_draws_per_value": NOISE_DRAWS,
        "ms_per_call_median": {k: round(v, 3) for k, v in med.items()},
        "ms_per_call_rounds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "covidct_noise_over_single_draw": round(med["covidct_noise"] / med["single_draw"], 2),
        "extra_noise_ms_as_share_of_dp_step": round(
            (med["covidct_noise"] - med["single_draw"]) / med["dp_step"], 3
        ),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
