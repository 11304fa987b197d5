"""How fast do candidate models learn mild disease, without DP and with patient-level DP?

Prints one JSON object: for each variant (run side by side in this process, on the same prepared
cohort) the validation patient AUC curve, the first step at which it passes 0.9 (patient score =
max and = mean of the slice probabilities), the test patient AUC at the end, seconds per step and,
for private variants, sigma, q, steps, C, delta and the epsilon spent.

Privacy unit = patient. Each step every training patient is included with probability q (Poisson);
an included patient contributes the gradient of its mean slice loss over up to k of its slices,
clipped to norm C as one unit; the clipped sum gets N(0, sigma^2 C^2) once and is divided by the
expected batch q*N (Abadi et al., 2016; the patient-level unit as in covidct's privacy model).
sigma is calibrated for the target epsilon with dp_accounting's RDP accountant over
PoissonSampled(q, Gaussian(sigma)) composed `steps` times (Mironov et al., 2019).

    .venv/bin/covidct synth --out /tmp/lb/cohort --patients 600 --slices 16 --matrix 64 --seed 1
    .venv/bin/covidct prepare /tmp/lb/cohort --labels /tmp/lb/cohort/labels.csv --out /tmp/lb/prep
    .venv/bin/python benchmarks/learnability.py /tmp/lb/prep
    .venv/bin/python benchmarks/learnability.py /tmp/lb/prep \
        --variant "dp=0,steps=100" --variant "dp=1,epsilon=3,steps=60,batch=128,lr=0.01"

A variant is comma-separated key=value overrides of ``Variant``'s fields (see below).
This is a study script, not product code: the product's DP step lives in covidct.privacy.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
from sklearn.metrics import roc_auc_score

from covidct.models import Pooling, build_model
from covidct.models.cnn import build_gn_cnn
from covidct.tfsetup import keras, tf
from data_prep.prepared import PrepFolder
from data_prep.slicing import mask_outside_lungs

# --- data ---------------------------------------------------------------------------------------


@dataclass
class SplitData:
    """One split held in memory: padded per-patient slice stacks."""

    images: np.ndarray  # (P, S, H, W) uint8, zero-padded past counts[p]
    counts: np.ndarray  # (P,) slices per patient
    labels: np.ndarray  # (P,) 0/1
    burden: np.ndarray | None = None  # (P,) "none" | "mild" | "severe" when the truth is known

    @property
    def n(self) -> int:
        return len(self.labels)


def _burdens(prep: Path, truth: Path | None) -> dict[str, str]:
    """Pseudonym -> disease burden, from synth's truth.csv via PREP/private (study only)."""
    if truth is None or not truth.exists():
        return {}
    with truth.open(newline="") as f:
        by_source = {r["patient_id"]: r["burden"] for r in csv.DictReader(f)}
    with PrepFolder(prep).pseudonym_map.open(newline="") as f:
        return {
            r["patient_id"]: by_source[r["source_patient_id"]]
            for r in csv.DictReader(f)
            if r["source_patient_id"] in by_source
        }


# The lung window maps HU -1350..150 to 0..255; data_prep.slicing's lung threshold (-400 HU).
_LUNG_U8 = round((-400.0 + 1350.0) / 1500.0 * 255)


def lung_masked(img: np.ndarray, *, fill: int, close: int) -> np.ndarray:
    """Replace everything outside the lungs by a constant (study option ``mask=1``).

    The product's ``data_prep.slicing.lung_field`` (``mask=2``, what
    ``prepare.slices.mask_outside_lungs`` applies) is this field, padded before the closing so
    that lungs at the image edge are not eroded; this copy keeps the study's results
    reproducible.

    Lungs = low-density regions that do not touch the border (as data_prep.slicing finds them),
    holes filled and closed with a ``close``-pixel disc so that dense findings inside or at the
    edge of the lung (ground glass, consolidation) stay in.
    """
    from scipy import ndimage

    low = img < _LUNG_U8
    labels, _ = ndimage.label(low)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    lung = low & ~np.isin(labels, border)
    if close:
        yy, xx = np.mgrid[-close : close + 1, -close : close + 1]
        disc = yy**2 + xx**2 <= close**2
        lung = ndimage.binary_closing(lung, structure=disc, iterations=1)
    lung = ndimage.binary_fill_holes(lung)
    return np.where(lung, img, np.uint8(fill)).astype(np.uint8)


def load_prepared(
    prep: Path, truth: Path | None = None, *, mask: int = 0, mask_fill: int = 64
) -> dict[str, SplitData]:
    """Read PREP/manifest.csv and its slice files into one SplitData per split."""
    with PrepFolder(prep).manifest_file.open(newline="") as f:
        rows = list(csv.DictReader(f))
    burdens = _burdens(prep, truth)
    by_patient: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    cache: dict[str, np.ndarray] = {}
    out: dict[str, SplitData] = {}
    for split in ("train", "validation", "test"):
        pats = sorted(p for p, rs in by_patient.items() if rs[0]["split"] == split)
        stacks = []
        for p in pats:
            rs = sorted(by_patient[p], key=lambda r: (r["file"], int(r["index"])))
            arrs = []
            for r in rs:
                if r["file"] not in cache:
                    cache[r["file"]] = np.load(prep / r["file"])
                sl = cache[r["file"]][int(r["index"])]
                if mask == 1:
                    sl = lung_masked(sl, fill=mask_fill, close=max(1, sl.shape[-1] // 21))
                elif mask == 2:  # the product's lung field (prepare.slices.mask_outside_lungs)
                    sl = mask_outside_lungs(sl, threshold=_LUNG_U8, fill=mask_fill)
                arrs.append(sl)
            stacks.append(np.stack(arrs))
        s_max = max(len(s) for s in stacks)
        size = stacks[0].shape[-1]
        images = np.zeros((len(stacks), s_max, size, size), np.uint8)
        for i, s in enumerate(stacks):
            images[i, : len(s)] = s
        out[split] = SplitData(
            images=images,
            counts=np.array([len(s) for s in stacks]),
            labels=np.array([int(by_patient[p][0]["label"]) for p in pats]),
            burden=np.array([burdens[p] for p in pats]) if burdens else None,
        )
    return out


def sample_units(
    data: SplitData, idx: np.ndarray, k: int, rng: np.random.Generator, augment: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to k distinct random slices of each patient in ``idx``, with a validity mask.

    augment=1: random left-right flip and up to 4-pixel shifts per slice (against memorising
    patients' anatomy; per-unit augmentation keeps the privacy unit intact).
    """
    size = data.images.shape[-1]
    x = np.zeros((len(idx), k, size, size), np.float32)
    m = np.zeros((len(idx), k), np.float32)
    for j, p in enumerate(idx):
        c = int(data.counts[p])
        pick = rng.choice(c, size=min(k, c), replace=False)
        x[j, : len(pick)] = data.images[p, pick] / 255.0
        m[j, : len(pick)] = 1.0
        if augment:
            for i in range(len(pick)):
                sl = x[j, i]
                if rng.random() < 0.5:
                    sl = sl[:, ::-1]
                dy, dx = rng.integers(-4, 5, size=2)
                x[j, i] = np.roll(sl, (int(dy), int(dx)), axis=(0, 1))
    return x[..., None], m, data.labels[idx].astype(np.float32)


def patient_scores(model: keras.Model, data: SplitData) -> dict[str, np.ndarray]:
    """Slice probabilities over ALL slices of each patient, aggregated by max and mean."""
    flat = np.concatenate([data.images[p, : data.counts[p]] for p in range(data.n)])
    probs = tf.sigmoid(model.predict(flat[..., None] / 255.0, batch_size=512, verbose=0))
    probs = np.asarray(probs)[:, 0]
    ends = np.cumsum(data.counts)
    parts = np.split(probs, ends[:-1])
    return {
        "max": np.array([p.max() for p in parts]),
        "mean": np.array([p.mean() for p in parts]),
    }


def aucs(model: keras.Model, data: SplitData) -> dict[str, float]:
    s = patient_scores(model, data)
    out = {agg: round(float(roc_auc_score(data.labels, v)), 4) for agg, v in s.items()}
    if data.burden is not None:
        # Mild positives against all negatives: the hard half of the task.
        keep = data.burden != "severe"
        out["mild_max"] = round(float(roc_auc_score(data.labels[keep], s["max"][keep])), 4)
        keep = data.burden != "mild"
        out["severe_max"] = round(float(roc_auc_score(data.labels[keep], s["max"][keep])), 4)
    return out


# --- accounting ---------------------------------------------------------------------------------


def _rdp_epsilon(*, sigma: float, q: float, steps: int, delta: float) -> float:
    acc = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(event, steps)
    return float(acc.get_epsilon(delta))


def calibrate_sigma(*, epsilon: float, q: float, steps: int, delta: float) -> float:
    """Smallest sigma (to dp_accounting's tolerance) with RDP epsilon <= target."""
    sigma = dp_accounting.calibrate_dp_mechanism(
        dp_accounting.rdp.RdpAccountant,
        lambda s: dp_accounting.dp_event.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), steps
        ),
        epsilon,
        delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(0.3, 1.0),
        tol=1e-3,
    )
    return float(sigma)


# --- variants -----------------------------------------------------------------------------------


@dataclass
class Variant:
    """One training run. Every field can be set with ``--variant key=value,...``."""

    name: str = ""
    prep: str = ""  # prepared folder; default: the positional argument
    model: str = "gn_cnn_small"  # a registry name, or "cnn" for the options below
    widths: str = "16-32-64"  # model=cnn only
    convs: int = 1  # model=cnn only: 3x3 convs per stage
    pooling: str = "logit_map"  # model=cnn only
    act: str = "relu"  # model=cnn only
    groups: int = 8  # model=cnn only
    stride: int = 1  # model=cnn only: stride of the first convolution
    stem: str = "conv"  # model=exp: conv | window (narrower window) | hist (local histograms)
    bins: int = 12  # model=exp, stem=hist
    lo: float = 0.25  # stem=hist: lowest threshold; stem=window: window bottom
    hi: float = 0.75  # stem=hist: highest threshold; stem=window: window top
    scales: str = "1-3-7"  # stem=hist: averaging windows
    first1x1: int = 0  # model=exp: the first trainable conv is 1x1
    norm_from: int = 0  # model=exp: GroupNorm from this stage on (earlier: conv bias, no norm)
    pool_last: int = 0  # model=exp: 2x2 max pool after the last stage too
    dp: int = 0  # 1: patient-level DP-SGD
    epsilon: float = 3.0
    delta: float = 0.0  # 0: 1 / (10 N)
    clip: float = 1.0  # C
    batch: int = 64  # patients per step (expected, q*N, when dp=1)
    k: int = 8  # slices per patient per step
    steps: int = 200
    opt: str = "adam"  # adam | sgd (momentum 0.9) | nesterov
    lr: float = 1e-3
    decay: str = "none"  # none | cosine
    warmup: int = 0  # linear warmup steps
    loss: str = "lse"  # mean (slice BCE averaged per patient) | lse (patient logit = LSE)
    exec: str = "loop"  # dp only: vmap (vectorized_map) | loop (tf.while_loop, batch 1)
    eval_every: int = 10
    seed: int = 0
    mask: int = 1  # 1: blank outside the lungs (lung_masked); 2: data_prep's lung_field; 0: none
    augment: int = 1  # 1: flips and shifts
    pretrain: str = ""  # a separate prepared cohort standing for public data (train split)
    pretrain_steps: int = 0  # non-private steps on it (batch 64 x 8 slices) before the run
    pretrain_lr: float = 1e-3
    stop_at: float = 0.0  # >0: stop once validation max-AUC passes it (exploration)
    extra: dict[str, Any] = field(default_factory=dict)


def parse_variant(text: str, base: Variant) -> Variant:
    kwargs: dict[str, Any] = {}
    types = {f.name: f.type for f in dataclasses.fields(Variant)}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in types or key == "extra":
            raise SystemExit(f"unknown variant key {key!r}; keys: {', '.join(types)}")
        t = types[key]
        kwargs[key] = int(value) if t == "int" else float(value) if t == "float" else value
    v = dataclasses.replace(base, **kwargs)
    if not v.name:
        v.name = text or "default"
    return v


def exp_model(v: Variant, size: int) -> keras.Model:
    """Exploration-only architectures (model=exp): stem and normalisation options."""
    L = keras.layers
    inputs = keras.Input((size, size, 1))
    if v.stem == "window":
        # A narrower window inside the lung window: tissue and bone saturate, so the largest
        # input contrasts left are lung vs ground glass (and lung edges).
        x = L.Rescaling(1.0, offset=-v.lo)(inputs)
        x = L.ReLU(max_value=v.hi - v.lo)(x)
        x = L.Rescaling(2.0 / (v.hi - v.lo), offset=-1.0)(x)
    elif v.stem == "hist":
        # Multi-scale local intensity histograms (fixed, data-independent): a soft thermometer
        # code of intensity, averaged over 1, 3, 7 pixel windows.
        t = np.linspace(v.lo, v.hi, v.bins, dtype=np.float32)
        dt = float(t[1] - t[0])
        conv = L.Conv2D(v.bins, 1, trainable=False, name="therm")
        code = conv(inputs)
        conv.set_weights([np.full((1, 1, 1, v.bins), 1.0 / dt, np.float32), -t / dt])
        code = L.ReLU(max_value=1.0)(code)
        scales = [int(c) for c in v.scales.split("-")]
        feats = [code if sc == 1 else L.AveragePooling2D(sc, 1, "same")(code) for sc in scales]
        x = L.Concatenate()(feats) if len(feats) > 1 else feats[0]
        x = L.Rescaling(2.0, offset=-1.0)(x)
    else:
        x = L.Rescaling(1 / 0.3, offset=-1.0)(inputs)
    for i, f in enumerate(int(w) for w in v.widths.split("-")):
        for j in range(v.convs):
            x = L.Conv2D(
                f,
                1 if (i == 0 and j == 0 and v.first1x1) else 3,
                padding="same",
                strides=v.stride if i == 0 and j == 0 else 1,
                use_bias=i < v.norm_from,
                kernel_initializer=keras.initializers.HeNormal(seed=v.seed * 100 + i * 10 + j),
            )(x)
            if i >= v.norm_from:
                x = L.GroupNormalization(v.groups)(x)
            x = L.Activation(v.act)(x)
        if v.pool_last or i < len(v.widths.split("-")) - 1:
            x = L.MaxPooling2D(2)(x)
    from covidct.models.layers import pool_to_logit

    logit = pool_to_logit(x, Pooling(v.pooling), seed=v.seed)
    return keras.Model(inputs, logit)


def make_model(v: Variant, size: int) -> keras.Model:
    if v.model == "exp":
        return exp_model(v, size)
    if v.model != "cnn":
        return build_model(v.model, input_size=size, seed=v.seed)
    return build_gn_cnn(
        input_size=size,
        seed=v.seed,
        widths=tuple(int(w) for w in v.widths.split("-")),
        convs_per_stage=v.convs,
        pooling=Pooling(v.pooling),
        groups=v.groups,
        activation=v.act,
        stem_stride=v.stride,
    )


def make_optimizer(v: Variant) -> keras.optimizers.Optimizer:
    lr: Any = v.lr
    if v.decay == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if v.warmup else v.lr,
            max(1, v.steps - v.warmup),
            warmup_target=v.lr if v.warmup else None,
            warmup_steps=v.warmup,
        )
    elif v.warmup:
        lr = keras.optimizers.schedules.PolynomialDecay(0.0, v.warmup, v.lr, power=1.0)
        # PolynomialDecay from 0 to lr over `warmup` steps, then constant lr.
    if v.opt == "adam":
        return keras.optimizers.Adam(lr)
    if v.opt in ("sgd", "nesterov"):
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=v.opt == "nesterov")
    raise SystemExit(f"unknown optimizer {v.opt!r}")


def make_unit_loss(
    model: keras.Model, v: Variant
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """loss(x (b,k,H,W,1), mask (b,k), y (b,)) -> per-patient loss (b,)."""

    def unit_loss(x: tf.Tensor, m: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(x)
        logits = model(tf.reshape(x, tf.concat([[-1], shape[2:]], 0)), training=True)
        logits = tf.reshape(logits, shape[:2])  # (b, k)
        if v.loss == "lse":
            # Patient logit = log-mean-exp of its slice logits: a smooth max, so a positive
            # patient is explained by its lesion slices without forcing clear slices up.
            masked = logits + (m - 1.0) * 1e9
            plog = tf.reduce_logsumexp(masked, 1) - tf.math.log(tf.reduce_sum(m, 1))
            return tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=plog)
        per = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.broadcast_to(y[:, None], tf.shape(logits)), logits=logits
        )
        return tf.reduce_sum(per * m, 1) / tf.maximum(tf.reduce_sum(m, 1), 1.0)

    return unit_loss


def make_plain_step(model: keras.Model, opt: keras.optimizers.Optimizer, v: Variant) -> Any:
    unit_loss = make_unit_loss(model, v)

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor, m: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(unit_loss(x, m, y))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return step


def make_dp_step(
    model: keras.Model,
    opt: keras.optimizers.Optimizer,
    v: Variant,
    *,
    sigma: float,
    expected_batch: float,
) -> Any:
    """Clip each patient's gradient to C, sum, add N(0, sigma^2 C^2) once, divide by q*N."""
    unit_loss = make_unit_loss(model, v)
    variables = model.trainable_variables
    clip = tf.constant(v.clip, tf.float32)
    noise = tf.random.Generator.from_seed(v.seed + 12345)

    def clipped_grad(x: tf.Tensor, m: tf.Tensor, y: tf.Tensor) -> tuple[list[tf.Tensor], Any]:
        with tf.GradientTape() as tape:
            loss = unit_loss(x[None], m[None], y[None])[0]
        g = tape.gradient(loss, variables)
        norm = tf.linalg.global_norm(g)
        scale = tf.minimum(1.0, clip / (norm + 1e-12))
        return [gi * scale for gi in g], norm

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor, m: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        if v.exec == "vmap":
            grads, norms = tf.vectorized_map(lambda a: clipped_grad(*a), (x, m, y))
            summed = [tf.reduce_sum(g, 0) for g in grads]
        else:
            n = tf.shape(x)[0]

            def body(i: tf.Tensor, acc: list[tf.Tensor], ns: tf.TensorArray) -> Any:
                g, norm = clipped_grad(x[i], m[i], y[i])
                return i + 1, [a + gi for a, gi in zip(acc, g, strict=True)], ns.write(i, norm)

            _, summed, ns = tf.while_loop(
                lambda i, *_: i < n,
                body,
                (0, [tf.zeros_like(w) for w in variables], tf.TensorArray(tf.float32, n)),
            )
            norms = ns.stack()
        noisy = [
            (s + noise.normal(tf.shape(s), stddev=sigma * v.clip)) / expected_batch for s in summed
        ]
        opt.apply_gradients(zip(noisy, variables, strict=True))
        return tf.reduce_mean(norms)

    return step


def pretrain(model: keras.Model, v: Variant, public: SplitData) -> float:
    """Non-private training on a separate ("public") cohort before the private run.

    Stands in for public pretraining (e.g. on a published COVID-CT dataset): no privacy cost
    on the private cohort. Returns the seconds spent.
    """
    rng = np.random.default_rng(v.seed + 1)
    pv = dataclasses.replace(v, lr=v.pretrain_lr, loss="lse", dp=0)
    step = make_plain_step(model, make_optimizer(pv), pv)
    t0 = time.perf_counter()
    for _ in range(v.pretrain_steps):
        idx = rng.choice(public.n, size=min(64, public.n), replace=False)
        x, m, y = sample_units(public, idx, 8, rng, v.augment)
        step(tf.constant(x), tf.constant(m), tf.constant(y))
    return time.perf_counter() - t0


# Folder for pretrained weights (--pretrain-cache), keyed by everything pretraining depends on.
PRETRAIN_CACHE: Path | None = None


def _pretrain_cache_path(v: Variant) -> Path | None:
    if PRETRAIN_CACHE is None:
        return None
    keys = ("pretrain", "pretrain_steps", "pretrain_lr", "model", "widths", "convs", "pooling")
    keys += ("act", "groups", "stride", "seed", "mask", "augment")
    text = json.dumps([getattr(v, k) for k in keys])
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    PRETRAIN_CACHE.mkdir(parents=True, exist_ok=True)
    return PRETRAIN_CACHE / f"pre_{digest}.weights.h5"


def run_variant(
    v: Variant, data: dict[str, SplitData], public: SplitData | None = None
) -> dict[str, Any]:
    keras.utils.set_random_seed(v.seed)
    rng = np.random.default_rng(v.seed)
    train, val, test = data["train"], data["validation"], data["test"]
    size = train.images.shape[-1]
    model = make_model(v, size)
    pretrain_s = 0.0
    if public is not None and v.pretrain_steps:
        cached = _pretrain_cache_path(v)
        if cached is not None and cached.exists():
            model.load_weights(cached)
            pretrain_s = float(cached.with_suffix(".seconds").read_text())
        else:
            pretrain_s = pretrain(model, v, public)
            if cached is not None:
                model.save_weights(cached)
                cached.with_suffix(".seconds").write_text(f"{pretrain_s:.1f}")
    opt = make_optimizer(v)
    n = train.n
    rec: dict[str, Any] = {
        "variant": v.name,
        "model": v.model if v.model != "cnn" else f"cnn {v.widths} x{v.convs} {v.pooling} {v.act}",
        "params": int(model.count_params()),
        "image_size": int(size),
        "train_patients": int(n),
        "k": v.k,
        "optimizer": v.opt,
        "lr": v.lr,
        "loss": v.loss,
        "steps": v.steps,
    }
    if pretrain_s:
        rec.update(
            pretrain_prep=v.pretrain,
            pretrain_steps=v.pretrain_steps,
            pretrain_seconds=round(pretrain_s, 1),
            val_auc_after_pretrain=aucs(model, val),
            test_auc_after_pretrain=aucs(model, test),
        )
    if v.dp:
        q = v.batch / n
        delta = v.delta or 1.0 / (10 * n)
        sigma = calibrate_sigma(epsilon=v.epsilon, q=q, steps=v.steps, delta=delta)
        eps = _rdp_epsilon(sigma=sigma, q=q, steps=v.steps, delta=delta)
        step = make_dp_step(model, opt, v, sigma=sigma, expected_batch=q * n)
        rec.update(
            dp=True,
            q=round(q, 5),
            expected_batch=v.batch,
            sigma=round(sigma, 4),
            clip=v.clip,
            delta=delta,
            epsilon_rdp=round(eps, 4),
            epochs=round(v.steps * q, 2),
            noise_std_over_batch=round(sigma * v.clip / (q * n), 5),
            exec=v.exec,
        )
    else:
        q = 0.0
        step = make_plain_step(model, opt, v)
        rec.update(dp=False, batch=v.batch, epochs=round(v.steps * v.batch / n, 2))
    curve: list[dict[str, Any]] = []
    first: dict[str, int | None] = {"max": None, "mean": None}
    train_s = 0.0
    step_times: list[float] = []
    t_start = time.perf_counter()
    for s in range(1, v.steps + 1):
        if v.dp:
            idx = np.flatnonzero(rng.random(n) < q)  # Poisson sampling: variable batch
            if len(idx) == 0:
                idx = np.zeros(0, np.int64)
        else:
            idx = rng.choice(n, size=min(v.batch, n), replace=False)
        x, m, y = sample_units(train, idx, v.k, rng, v.augment)
        t0 = time.perf_counter()
        if len(idx) == 0:
            # An empty Poisson batch still takes a (noise-only) step; rare at these q.
            x = np.zeros((1, v.k, size, size, 1), np.float32)
            m = np.zeros((1, v.k), np.float32)
            y = np.zeros(1, np.float32)
        out = float(step(tf.constant(x), tf.constant(m), tf.constant(y)))
        dt = time.perf_counter() - t0
        train_s += dt
        step_times.append(dt)
        if s % v.eval_every == 0 or s == v.steps:
            a = aucs(model, val)
            curve.append({"step": s, "val_auc": a, ("clip_norm" if v.dp else "loss"): out})
            for agg in first:
                if first[agg] is None and a[agg] >= 0.9:
                    first[agg] = s
            print(f"[{v.name}] step {s} val {a} {out:.4f} {train_s:.1f}s", file=sys.stderr)
            if v.stop_at and a["max"] >= v.stop_at:
                break
    final_val = curve[-1]["val_auc"]
    rec.update(
        steps_run=s,
        first_step_val_auc_ge_0_9=first,
        val_auc_final=final_val,
        test_auc=aucs(model, test),
        train_seconds=round(train_s, 1),
        # The first step includes tracing; the median is the steady-state cost.
        seconds_per_step_median=round(float(np.median(step_times[1:] or step_times)), 4),
        wall_seconds=round(time.perf_counter() - t_start, 1),
        curve=curve,
    )
    return rec


# Small defaults (about 5 minutes on 2 cores for a 600-patient, 16-slice, 64-pixel cohort):
# the recommended non-private recipe, the same without lung masking, and patient-level DP at
# epsilon 3.
DEFAULT_VARIANTS = (
    "name=nonprivate,dp=0,steps=300,batch=64,k=8,lr=0.001,eval_every=25",
    "name=nonprivate_no_mask,dp=0,mask=0,steps=300,batch=64,k=8,lr=0.001,eval_every=25",
    "name=dp_eps3,dp=1,epsilon=3,steps=200,batch=128,k=4,lr=0.003,clip=1,eval_every=25",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("prep", type=Path, help="a prepared folder (covidct prepare --out)")
    ap.add_argument("--variant", action="append", help="key=value,... (repeatable)")
    ap.add_argument(
        "--truth", type=Path, help="synth's truth.csv: adds mild-only and severe-only AUCs"
    )
    ap.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0 = all)")
    ap.add_argument(
        "--pretrain-cache", type=Path, help="folder to keep and reuse pretrained weights in"
    )
    args = ap.parse_args()
    global PRETRAIN_CACHE
    PRETRAIN_CACHE = args.pretrain_cache
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    base = Variant(prep=str(args.prep))
    variants = [parse_variant(t, base) for t in (args.variant or DEFAULT_VARIANTS)]
    cache: dict[tuple[str, int], dict[str, SplitData]] = {}
    results = []
    t0 = time.perf_counter()
    for v in variants:
        key = (v.prep, v.mask)
        if key not in cache:
            cache[key] = load_prepared(Path(v.prep), args.truth, mask=v.mask)
        public = None
        if v.pretrain and v.pretrain_steps:
            pkey = (v.pretrain, v.mask)
            if pkey not in cache:
                cache[pkey] = load_prepared(Path(v.pretrain), mask=v.mask)
            public = cache[pkey]["train"]
        results.append(run_variant(v, cache[key], public))
    print(
        json.dumps(
            {
                "benchmark": "learnability",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "tensorflow": tf.__version__,
                "wall_seconds": round(time.perf_counter() - t0, 1),
                "variants": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
