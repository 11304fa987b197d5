"""The guarantee rests on a secret: the sample and the noise come from a key nobody can read.

An auditor holding the run folder (config, plan, checkpoints, report, logs) must not be able to
regenerate a step's noise (subtracting it from two checkpoints would give the clipped gradient
sum) nor a step's sample (that would remove the amplification by subsampling).
"""

from __future__ import annotations

import base64
import copy
import json
import pickle
import secrets
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from covidct import checkpoint
from covidct.cli import main
from covidct.data.units import PoissonSampler, ShuffledSampler
from covidct.privacy.mechanism import DPSettings, ExecutionMode, gaussian_noise
from covidct.privacy.secret import KEY_BYTES, RunSecret, SecretKeyError
from covidct.privacy.step import DPGradient
from covidct.tfsetup import keras, tf
from tests.covidct.keys import known_secret

TRAIN_SETS = {
    "model": "gn_cnn_small",  # many parameters: a wrong guess of the noise is far off
    "ema": 0.0,
    "epochs": 1,
    "batch_size": 8,
    "max_slices_per_unit": 2,
    "chunk_units": 8,
    "optimizer": "sgd",
    "learning_rate": 0.05,
    "checkpoint_every": 1,
    "seed": 0,
}


def _key_of(s: RunSecret) -> bytes:
    return s._key  # the test looks inside; nothing in covidct does


class _KeySpy:
    """Wraps ``RunSecret.draw``: the real OS draw, with each key kept for the test to hunt."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[bytes] = []
        real = RunSecret.draw.__func__  # type: ignore[attr-defined]

        def draw(cls: type[RunSecret]) -> RunSecret:
            s = real(cls)
            self.keys.append(_key_of(s))
            return s

        monkeypatch.setattr(RunSecret, "draw", classmethod(draw))


def _train_cli(prep: Path, runs: Path, run_id: str) -> int:
    cmd = ["train", "--data", str(prep), "--epsilon", "3", "--runs", str(runs)]
    cmd += ["--run-id", run_id, "--no-progress"]
    for k, v in TRAIN_SETS.items():
        cmd += ["--set", f"train.{k}={v}"]
    return main(cmd)


def _weights(run: Path) -> list[np.ndarray]:
    return keras.models.load_model(run / "model.keras", compile=False).get_weights()


def _forms(raw: bytes) -> list[bytes]:
    """How a secret could appear in a file: raw, hex (either case), base64, decimal."""
    return [
        raw,
        raw.hex().encode(),
        raw.hex().upper().encode(),
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw),
        str(int.from_bytes(raw, "big")).encode(),
        str(int.from_bytes(raw, "little")).encode(),
    ]


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# ---- the key itself --------------------------------------------------------------------------


def test_each_draw_is_a_fresh_256_bit_key_from_the_os(monkeypatch):
    seen: list[int] = []
    real = secrets.token_bytes

    def token_bytes(n: int) -> bytes:
        seen.append(n)
        return real(n)

    monkeypatch.setattr(secrets, "token_bytes", token_bytes)
    a, b = RunSecret.draw(), RunSecret.draw()
    assert seen == [KEY_BYTES, KEY_BYTES] and KEY_BYTES * 8 >= 128
    assert _key_of(a) != _key_of(b)


def test_the_key_does_not_print_pickle_or_leak_through_copies():
    s = RunSecret.draw()
    key = _key_of(s)
    for text in (repr(s), str(s), f"{s!r}"):
        assert all(form.decode("latin-1") not in text for form in _forms(key)[1:])
        assert "not shown" in text
    with pytest.raises(SecretKeyError):
        pickle.dumps(s)
    assert copy.deepcopy(s) is s
    with pytest.raises(ValueError, match="128 bits"):
        RunSecret(b"short")


def test_derived_randomness_is_uniform_and_separated_by_step_and_purpose():
    s = RunSecret.draw()
    u = s.uniforms(b"poisson", 3, 20_000)
    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    assert not np.array_equal(u[:100], s.uniforms(b"poisson", 4, 100))
    assert not np.array_equal(u[:100], s.uniforms(b"order", 3, 100))
    np.testing.assert_array_equal(u[:100], s.uniforms(b"poisson", 3, 100))  # a pure function
    assert not np.array_equal(s.noise_seed(0), s.noise_seed(1))
    assert sorted(s.permutation(2, 50)) == list(range(50))
    with pytest.raises(ValueError, match="purpose"):
        s.uniforms(b"other", 0, 1)


def test_two_keys_give_different_samples_and_shuffles():
    a, b = RunSecret.draw(), RunSecret.draw()
    pa = PoissonSampler(500, sampling_rate=0.1, secret=a)
    pb = PoissonSampler(500, sampling_rate=0.1, secret=b)
    assert not np.array_equal(pa.sample(0), pb.sample(0))
    sa = ShuffledSampler(500, batch_size=50, secret=a)
    sb = ShuffledSampler(500, batch_size=50, secret=b)
    assert not np.array_equal(sa.sample(0), sb.sample(0))


def test_every_worker_receives_the_chiefs_key():
    chief, other = known_secret(1), known_secret(2)
    # what the collective returns on every worker: replica 0's values
    sent = np.frombuffer(_key_of(chief), np.uint8).astype(np.float32)
    assert _key_of(other.shared(lambda mine: sent)) == _key_of(chief)
    assert _key_of(chief.shared(lambda mine: mine)) == _key_of(chief)  # one worker
    with pytest.raises(RuntimeError, match="damaged"):
        other.shared(lambda mine: mine[:3])


# ---- the noise -------------------------------------------------------------------------------


def _pure_noise(secret: RunSecret, step: int) -> np.ndarray:
    """The noise of one step with nothing accumulated (a 4160-parameter model)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(64)]
    )
    settings = DPSettings(clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=1.0)
    dp = DPGradient(model, settings=settings, mode=ExecutionMode.NANOBATCH, secret=secret)
    dp.reset()
    return np.concatenate([np.ravel(g) for g in dp.result(step=step)])


def test_two_runs_with_the_same_settings_draw_different_noise():
    a, b = _pure_noise(RunSecret.draw(), 0), _pure_noise(RunSecret.draw(), 0)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1
    same = known_secret(3)
    np.testing.assert_array_equal(_pure_noise(same, 5), _pure_noise(same, 5))


def test_each_noise_value_is_a_sum_of_four_draws_with_std_sigma_c():
    seed = tf.constant(known_secret(4).noise_seed(0), tf.int64)
    x = gaussian_noise(0, tf.zeros([200_000]), std=2.5, noise_seed=seed).numpy()
    assert x.std() == pytest.approx(2.5, rel=0.01)
    assert stats.kstest(x / 2.5, "norm").pvalue > 1e-4
    draws = tf.random.stateless_normal(
        [4, 200_000], seed=tf.random.experimental.stateless_fold_in(seed, 0)
    ).numpy()
    np.testing.assert_allclose(x, 2.5 * draws.sum(0) / 2, rtol=1e-5, atol=1e-5)


# ---- a whole run, read as an auditor would ----------------------------------------------------


@pytest.fixture(scope="module")
def twin_runs(prep: Path, tmp_path_factory: pytest.TempPathFactory):
    """``covidct train`` twice with identical arguments (only the run folder's name differs),
    with every key drawn, every checkpoint's weights and every line printed or logged kept."""
    runs = tmp_path_factory.mktemp("twins")
    saved: dict[str, list[tuple[int, list[np.ndarray]]]] = {"a": [], "b": []}
    with pytest.MonkeyPatch.context() as m:
        spy = _KeySpy(m)
        real_save = checkpoint.save_state
        current = ["a"]

        def save_state(run: Path, **kw: object) -> None:
            loop = kw["loop"]
            saved[current[0]].append((loop.next_step, [np.array(w) for w in kw["weights"]]))
            real_save(run, **kw)

        m.setattr(checkpoint, "save_state", save_state)
        import logging

        records: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(self.format(record))

        handler = Keep(level=logging.DEBUG)
        root = logging.getLogger()
        root.addHandler(handler)
        old_level = root.level
        root.setLevel(logging.DEBUG)
        try:
            assert _train_cli(prep, runs, "a") == 0
            current[0] = "b"
            assert _train_cli(prep, runs, "b") == 0
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
    return {"runs": runs, "keys": spy.keys, "saved": saved, "logs": records}


def test_two_identical_train_commands_give_different_models(twin_runs):
    runs = twin_runs["runs"]
    assert len(twin_runs["keys"]) == 2 and twin_runs["keys"][0] != twin_runs["keys"][1]
    cfg_a, cfg_b = (yaml.safe_load((runs / r / "config.yaml").read_text()) for r in "ab")
    assert cfg_a == cfg_b  # the same config and seed ...
    a, b = _weights(runs / "a"), _weights(runs / "b")
    assert any(not np.allclose(x, y) for x, y in zip(a, b, strict=True))  # ... other models


def test_no_file_of_the_run_or_the_prepared_data_and_no_log_line_holds_the_key(
    twin_runs, prep, capsys
):
    runs = twin_runs["runs"]
    secrets_to_find: list[bytes] = []
    for raw in twin_runs["keys"]:
        secrets_to_find += _forms(raw)
        s = RunSecret(raw)
        for step in range(8):  # a step's noise seed regenerates that step's noise
            secrets_to_find += _forms(s.noise_seed(step).tobytes())
            secrets_to_find += [str(int(v)).encode() for v in s.noise_seed(step)]
    files = _files(runs) + _files(prep)
    assert len(files) > 20
    names = {p.name for p in _files(runs)}
    assert not any("key" in n or "secret" in n for n in names), names
    for path in files:
        data = path.read_bytes()
        for form in secrets_to_find:
            assert form not in data, f"{path} holds a form of the run's secret"
    printed = "\n".join(twin_runs["logs"]) + capsys.readouterr().out
    for form in secrets_to_find[1:]:
        assert form.decode("latin-1") not in printed


def test_a_steps_noise_cannot_be_regenerated_from_config_and_plan(twin_runs):
    """The attack that worked before: regenerate step t's noise from the stored seed and
    subtract it from the update between two checkpoints. The positive control (the real key)
    shows that the subtraction does expose the clipped sum when the noise is known."""
    run = twin_runs["runs"] / "a"
    config = yaml.safe_load((run / "config.yaml").read_text())
    plan = json.loads((run / "checkpoints" / "plan.json").read_text())
    report = json.loads((run / "privacy_report.json").read_text())
    assert "noise_multiplier" in report and plan["train"]["seed"] == config["train"]["seed"]
    sigma, c, qn = report["noise_multiplier"], report["clip_norm"], report["expected_batch_size"]
    lr = config["train"]["learning_rate"]
    by_step = dict(twin_runs["saved"]["a"])
    step = 1  # the update between the checkpoints after steps 1 and 2 is step 1's
    before, after = by_step[1], by_step[2]
    noisy_sum = [(b - a) / lr * qn for b, a in zip(before, after, strict=True)]
    bound = c * plan["n_units"]  # a clipped sum of at most N units of norm <= C

    def residual(noise: list[np.ndarray]) -> float:
        return float(
            np.sqrt(sum(np.sum((g - z) ** 2) for g, z in zip(noisy_sum, noise, strict=True)))
        )

    def regenerate(seed_pair: np.ndarray) -> list[np.ndarray]:
        t = tf.constant(seed_pair, tf.int64)
        return [
            gaussian_noise(i, tf.zeros(g.shape), std=sigma * c, noise_seed=t).numpy()
            for i, g in enumerate(noisy_sum)
        ]

    def regenerate_as_before(seed: int) -> list[np.ndarray]:
        """How covidct drew step t's noise when it came from train.seed."""
        return [
            sigma
            * c
            * tf.random.stateless_normal(
                g.shape, seed=tf.constant([seed, step * 100_003 + i], tf.int64)
            ).numpy()
            for i, g in enumerate(noisy_sum)
        ]

    real = RunSecret(twin_runs["keys"][0])
    assert residual(regenerate(real.noise_seed(step))) <= bound  # the control: the attack works
    for seed in {int(config["train"]["seed"]), int(plan["train"]["seed"])}:
        assert residual(regenerate_as_before(seed)) > 3 * bound
        for guess in (
            np.array([seed, step], np.int64),
            RunSecret(seed.to_bytes(KEY_BYTES, "big")).noise_seed(step),
        ):
            assert residual(regenerate(guess)) > 3 * bound
