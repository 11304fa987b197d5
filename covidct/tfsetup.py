"""The one place TensorFlow, Keras and tensorflow-privacy are imported and configured.

Import ``tf``, ``keras`` and the tensorflow-privacy submodules from here, never directly:
- tensorflow-privacy's Keras optimizers wrap Keras 2 legacy optimizers, so the whole project uses
  tf-keras (Keras 2), selected by ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is first imported;
- ``import tensorflow_privacy`` fails on TF >= 2.16 (it imports the removed tf.estimator), so its
  package __init__ is skipped (``sys.skip_tf_privacy_import``) and submodules are imported alone.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.skip_tf_privacy_import = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a moment.

    TF 2.21's C++ layer writes start-up notes (oneDNN, CUDA probing, cuInit errors on machines
    without a GPU) straight to fd 2, before its logging is initialised, where neither Python
    logging nor TF_CPP_MIN_LOG_LEVEL reach. Python exceptions are unaffected.
    COVIDCT_TF_VERBOSE=1 shows everything.
    """
    if os.environ.get("COVIDCT_TF_VERBOSE") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with quiet_stderr():
    import tensorflow as tf
    import tf_keras as keras

if not keras.__version__.startswith(tf.__version__.rsplit(".", 1)[0]):
    raise ImportError(
        f"tf-keras {keras.__version__} does not match TensorFlow {tf.__version__}: "
        "reinstall with `make venv` (versions are pinned in constraints.txt)"
    )

# pfor's notes ("Conv2DBackpropFilter uses a while_loop") and similar are not for users
tf.get_logger().setLevel("ERROR")


def privacy_tests() -> tuple[Any, Any]:
    """tensorflow-privacy's membership-inference attack module and its data structures.

    Installed by ``tools/install_privacy_tests.py`` (``make venv``): tensorflow-privacy 0.9.0's
    wheel lacks the package.
    """
    try:
        from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import (
            data_structures,
            membership_inference_attack,
        )
    except ImportError as err:
        raise ImportError(
            f"tensorflow-privacy's privacy_tests is not installed ({err}). Fix: run "
            "`make venv` (or .venv/bin/python tools/install_privacy_tests.py)."
        ) from err
    return membership_inference_attack, data_structures


__all__ = ["keras", "privacy_tests", "quiet_stderr", "tf"]
