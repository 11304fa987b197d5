"""The run's secret randomness: the one owner of the key behind the Poisson sample and the noise.

Why a secret: DP-SGD's guarantee is about a mechanism whose sampling and noise are random TO THE
ADVERSARY. Whoever can regenerate a step's noise subtracts it from two consecutive checkpoints
and gets that step's clipped gradient sum exactly; whoever knows which units a step sampled
loses the amplification by subsampling that the accountant counts on (Balle, Barthe & Gaboardi
2018). A seed written in ``config.yaml`` gives both away. So:

- the key is 256 bits from the operating system (``secrets.token_bytes``), drawn when a training
  attempt starts (``RunSecret.draw``); nothing writes it anywhere: not the config, the plan, the
  checkpoints, the logs, the report or the ledger. A resumed run draws a FRESH key: the steps it
  takes are new, independently randomised steps, and every step ever started stays counted
  (``covidct.checkpoint``), so the accounting is unchanged;
- everything a step needs is derived from the key with SHAKE-256 (FIPS 202), separated by purpose
  and step: 64-bit uniforms for the Poisson sample, a permutation for shuffled batches, and a
  128-bit seed for TensorFlow's stateless Philox normal sampler (the noise); a derived value says
  nothing about the key or about other steps;
- each noise value is the sum of four independent normal draws, halved (same distribution):
  the defence against floating-point attacks on naive Gaussian samplers that Opacus' secure mode
  uses (Holohan & Braghin 2021, "Secure Random Sampling in Differential Privacy"; the attacks:
  Mironov 2012 for Laplace, Jin et al. 2022 for Gaussian);
- with several workers, every worker needs the same sample, so the chief's key is sent to the
  others over the strategy's own collective (``shared``), never through ``--workers``,
  ``TF_CONFIG`` or the config.

``train.seed`` keeps its job for what the guarantee does not rest on: initialisation, which of
a patient's slices are used, augmentation, the split.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, NoReturn

import numpy as np

__all__ = ["GENERATOR", "KEY_BYTES", "NOISE_DRAWS", "RunSecret", "SecretKeyError"]

KEY_BYTES = 32  # 256 bits: beyond guessing with any margin (128 bits already is)
NOISE_DRAWS = 4  # each noise value is the sum of 4 draws of N(0, s^2), halved: N(0, s^2)

GENERATOR = (
    f"a {8 * KEY_BYTES}-bit key from the operating system (Python secrets), drawn per training "
    "attempt and never stored; per step, SHAKE-256 of (key, purpose, step) gives the Poisson "
    "sample (64-bit uniforms) and a 128-bit seed of TensorFlow's stateless Philox normal "
    f"sampler; each noise value is the sum of {NOISE_DRAWS} independent draws, halved "
    "(Holohan & Braghin 2021, as in Opacus' secure mode)"
)

_PURPOSES = (b"poisson", b"order", b"noise")


class SecretKeyError(TypeError):
    """A run's secret key was about to leave memory (pickled, copied into a file)."""


class RunSecret:
    """The secret key of one training attempt, and the per-step randomness derived from it.

    Build it with ``draw`` (what training does) or ``shared`` (several workers). The key is held
    only in this object: it has no accessor, does not print, and refuses to be pickled.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        """Use ``draw``; ``from_known_key_for_tests`` is for tests that need two equal runs."""
        if not isinstance(key, bytes | bytearray) or len(key) < 16:
            raise ValueError("a run secret needs at least 128 bits of key")
        self._key = bytes(key)

    @classmethod
    def draw(cls) -> RunSecret:
        """A fresh key from the operating system's CSPRNG (``secrets.token_bytes``)."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_known_key_for_tests(cls, key: bytes) -> RunSecret:
        """A secret from KNOWN bytes: only for tests (a resumed run compared with an
        uninterrupted one). Nothing in ``covidct`` calls this; a known key voids the guarantee."""
        return cls(key)

    def shared(self, broadcast: Any) -> RunSecret:
        """The chief's key on every worker.

        Args:
            broadcast: ``broadcast(values)`` returns replica 0's ``values`` on every worker
                (``covidct.devices.DeviceChoice.broadcast_from_chief``, an all-reduce inside
                the strategy).
        """
        mine = np.frombuffer(self._key, np.uint8).astype(np.float32)  # bytes are exact
        theirs = np.rint(np.asarray(broadcast(mine), np.float64))
        if theirs.shape != mine.shape or theirs.min() < 0 or theirs.max() > 255:
            raise RuntimeError("the chief's key arrived damaged: the workers cannot agree")
        return RunSecret(theirs.astype(np.uint8).tobytes())

    # ---- derived randomness --------------------------------------------------------------

    def _stream(self, purpose: bytes, index: int, n_bytes: int) -> bytes:
        if purpose not in _PURPOSES:
            raise ValueError(f"unknown purpose {purpose!r}")
        xof = hashlib.shake_256()
        xof.update(len(self._key).to_bytes(2, "big") + self._key)
        xof.update(purpose + b"\x00" + int(index).to_bytes(8, "big", signed=False))
        return xof.digest(n_bytes)

    def uniforms(self, purpose: bytes, index: int, n: int) -> np.ndarray:
        """``n`` independent uniforms in [0, 1) (53-bit resolution) for ``purpose`` at ``index``."""
        words = np.frombuffer(self._stream(purpose, index, 8 * n), dtype=">u8")
        return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def poisson_sample(self, step: int, *, n_units: int, sampling_rate: float) -> np.ndarray:
        """Indices of the units in step ``step``'s batch: each independently with prob. q."""
        return np.flatnonzero(self.uniforms(b"poisson", step, n_units) < sampling_rate)

    def permutation(self, epoch: int, n: int) -> np.ndarray:
        """A uniformly random order of ``n`` units for epoch ``epoch`` (shuffled sampling)."""
        keys = np.frombuffer(self._stream(b"order", epoch, 8 * n), dtype=">u8")
        return np.argsort(keys, kind="stable")

    def noise_seed(self, step: int) -> np.ndarray:
        """The seed (2 x int64) of step ``step``'s noise, for ``tf.random.stateless_normal``."""
        return np.frombuffer(self._stream(b"noise", step, 16), dtype="<i8").copy()

    # ---- the key stays here --------------------------------------------------------------

    def __repr__(self) -> str:
        return f"RunSecret(<{8 * len(self._key)}-bit key, not shown>)"

    def __reduce__(self) -> NoReturn:
        raise SecretKeyError("a run's secret key is never serialised (pickle, copy to a file)")

    def __copy__(self) -> RunSecret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> RunSecret:
        return self
