"""DP-SGD step throughput and peak memory: covidct's modes vs non-private vs tensorflow-privacy.

Prints one JSON object. Every variant trains the same model on the same synthetic batch; each
runs in its own child process (spawned by this script, one after another) so that its peak RSS
is its own; examples/s are measured after a warm-up, over --seconds of steps. A last child runs
non-private, auto, per-layer and nanobatch steps in turns of about half a second in one process
("interleaved"), so that their ratios do not depend on when each process happened to run.

    .venv/bin/python benchmarks/bench_dp_step.py [--size 64 --batch 32 --seconds 15 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

VARIANTS = [
    "non_private",
    "covidct_nanobatch",
    "covidct_vectorized",
    "covidct_vectorized_map",
    "covidct_auto",
    "covidct_nanobatch_per_layer",
    "covidct_vectorized_per_layer",
    "tf_privacy_per_example",
]


def build_variant(name: str, size: int, batch: int, model_name: str) -> tuple[Any, Any]:
    """(one training step of ``name`` as a no-argument callable, its model)."""
    import numpy as np

    from covidct.devices import resolve_execution
    from covidct.models import build_model
    from covidct.privacy.mechanism import DPSettings
    from covidct.privacy.modes import ClippingMode, ExecutionMode
    from covidct.privacy.secret import RunSecret
    from covidct.privacy.step import DPGradient
    from covidct.tfsetup import keras, tf

    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 1), dtype=np.float32)
    y = (rng.random(batch) > 0.5).astype(np.float32)
    model = build_model(model_name, input_size=size, seed=0)
    opt = keras.optimizers.SGD(learning_rate=0.01)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)

    if name == "non_private":

        @tf.function
        def step() -> None:
            with tf.GradientTape() as tape:
                loss = bce(y[:, None], model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        run = step
    elif name == "tf_privacy_per_example":
        from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras import DPKerasSGDOptimizer

        dp_opt = DPKerasSGDOptimizer(
            l2_norm_clip=1.0, noise_multiplier=1.0, num_microbatches=batch, learning_rate=0.01
        )
        per_ex = keras.losses.BinaryCrossentropy(from_logits=True, reduction="none")

        def run() -> None:
            with tf.GradientTape(persistent=True) as tape:
                loss = per_ex(y[:, None], model(x, training=True))
            dp_opt.minimize(loss, model.trainable_variables, tape=tape)

    else:
        mode = {
            "covidct_nanobatch": ExecutionMode.NANOBATCH,
            "covidct_nanobatch_per_layer": ExecutionMode.NANOBATCH,
            "covidct_vectorized_per_layer": ExecutionMode.VECTORIZED,
            "covidct_vectorized": ExecutionMode.VECTORIZED,
            "covidct_vectorized_map": ExecutionMode.VECTORIZED,
            "covidct_auto": resolve_execution(ExecutionMode.AUTO, "cpu"),
        }[name]
        clipping = ClippingMode.PER_LAYER if "per_layer" in name else ClippingMode.FLAT
        dp = DPGradient(
            model,
            settings=DPSettings(
                clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=batch, clipping=clipping
            ),
            mode=mode,
            secret=RunSecret.draw(),
            vectorized_impl="vectorized_map" if name == "covidct_vectorized_map" else None,
        )
        chunk = min(batch, 32)
        ux = x[:, None]  # slice units: one slice each
        mask = np.ones((batch, 1), np.float32)
        present = np.ones(batch, np.float32)
        rounds = [
            {0: (ux[s : s + chunk], mask[s : s + chunk], y[s : s + chunk], present[s : s + chunk])}
            for s in range(0, batch, chunk)
        ]
        counter = [0]

        def run() -> None:  # as the training loop does it
            dp.run_batch(rounds, opt, step=counter[0])
            counter[0] += 1

        run.vectorized_impl = dp.vectorized_impl  # type: ignore[attr-defined]

    return run, model


def run_variant(name: str, size: int, batch: int, seconds: float, model_name: str) -> dict:
    import numpy as np

    run, model = build_variant(name, size, batch, model_name)
    dp_impl = getattr(run, "vectorized_impl", None)
    for _ in range(3):  # trace and warm up
        run()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or steps < 3:
        run()
        steps += 1
    elapsed = time.perf_counter() - t0
    return {
        "examples_per_s": round(steps * batch / elapsed, 1),
        "steps": steps,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "params": int(sum(int(np.prod(v.shape)) for v in model.trainable_variables)),
        **({"vectorized_impl": dp_impl} if name.startswith("covidct_") else {}),
    }


INTERLEAVED = ["non_private", "covidct_auto", "covidct_vectorized_per_layer", "covidct_nanobatch"]


def run_interleaved(size: int, batch: int, seconds: float, model_name: str) -> dict:
    """The throughput ratios with the variants taking turns in ONE process.

    Each variant runs blocks of steps for about half a second in turn until each has had
    ``seconds``; a slow spell of a shared machine then hits every variant alike, which separate
    processes minutes apart do not guarantee.
    """
    steps = {n: build_variant(n, size, batch, model_name)[0] for n in INTERLEAVED}
    block = {}
    for n, run in steps.items():  # trace, warm up, and size a block to about 0.5 s
        for _ in range(3):
            run()
        t0 = time.perf_counter()
        run()
        block[n] = max(1, round(0.5 / max(time.perf_counter() - t0, 1e-4)))
    spent = dict.fromkeys(steps, 0.0)
    done = dict.fromkeys(steps, 0)
    while min(spent.values()) < seconds:
        for n, run in steps.items():
            t0 = time.perf_counter()
            for _ in range(block[n]):
                run()
            spent[n] += time.perf_counter() - t0
            done[n] += block[n]
    rate = {n: done[n] * batch / spent[n] for n in steps}
    return {
        "examples_per_s": {n: round(r, 1) for n, r in rate.items()},
        "ratio_to_non_private": {n: round(r / rate["non_private"], 3) for n, r in rate.items()},
        "seconds_each": seconds,
    }


def child(args: argparse.Namespace, name: str, batch: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--size",
        str(args.size),
        "--batch",
        str(batch),
        "--seconds",
        str(args.seconds),
        "--model",
        args.model,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=3, help="runs of each variant (median kept)")
    ap.add_argument("--model", default="gn_cnn_small")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child == "interleaved":
        print(json.dumps(run_interleaved(args.size, args.batch, args.seconds, args.model)))
        return
    if args.child:
        print(json.dumps(run_variant(args.child, args.size, args.batch, args.seconds, args.model)))
        return
    # rounds: every variant once per round, rounds one after another, so a slow spell of a
    # shared machine hits all variants alike; each variant reports its median round
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            runs[name].append(child(args, name, args.batch))
    results = {}
    for name, rs in runs.items():
        ok = sorted((r for r in rs if "examples_per_s" in r), key=lambda r: r["examples_per_s"])
        if not ok:
            results[name] = rs[0]
            continue
        results[name] = {
            **ok[len(ok) // 2],
            "examples_per_s_rounds": [r["examples_per_s"] for r in rs if "examples_per_s" in r],
        }
    base = results["non_private"].get("examples_per_s")
    tfp = results["tf_privacy_per_example"].get("examples_per_s")
    ratios = {}
    for name, r in results.items():
        if "examples_per_s" in r and base:
            ratios[name] = round(r["examples_per_s"] / base, 3)
    # the same ratio within each round (variants of one round ran minutes apart, not hours)
    ratio_rounds = {
        name: [
            round(r["examples_per_s"] / b["examples_per_s"], 3)
            for r, b in zip(runs[name], runs["non_private"], strict=True)
            if "examples_per_s" in r and "examples_per_s" in b
        ]
        for name in VARIANTS
        if name != "non_private"
    }
    big = child(args, "covidct_nanobatch", 512)
    together = child(args, "interleaved", args.batch)
    small_mem = results["covidct_nanobatch"].get("peak_rss_mb")
    print(
        json.dumps(
            {
                "benchmark": "dp_step",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "model": args.model,
                "input": [args.size, args.size, 1],
                "batch": args.batch,
                "units": "slice (one example per unit), as tensorflow-privacy per-example",
                "variants": results,
                "ratio_to_non_private": ratios,
                "ratio_to_non_private_per_round": ratio_rounds,
                # the steadier figure: the variants take turns in one process (run_interleaved)
                "interleaved": together,
                "covidct_auto_vs_tf_privacy": round(
                    results["covidct_auto"]["examples_per_s"] / tfp, 1
                )
                if tfp and "examples_per_s" in results["covidct_auto"]
                else None,
                # the paper's extension: per-layer clipping against flat, same execution mode
                "per_layer_vs_flat": {
                    mode: round(
                        results[f"covidct_{mode}_per_layer"]["examples_per_s"]
                        / results[f"covidct_{mode}"]["examples_per_s"],
                        3,
                    )
                    for mode in ("nanobatch", "vectorized")
                    if "examples_per_s" in results[f"covidct_{mode}_per_layer"]
                    and "examples_per_s" in results[f"covidct_{mode}"]
                },
                "nanobatch_peak_rss_mb": {
                    "logical_batch_32": small_mem,
                    "logical_batch_512": big.get("peak_rss_mb"),
                },
                "nanobatch_memory_512_vs_32": round(big["peak_rss_mb"] / small_mem, 3)
                if small_mem and "peak_rss_mb" in big
                else None,
                "rounds": args.rounds,
                "note": "each variant in its own child process (own peak RSS), once per round, "
                "rounds in turn; the median round is reported; chunks of 32 units; "
                "'interleaved': the variants in turns of about 0.5 s in one process",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
