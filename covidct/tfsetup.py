"""The one place TensorFlow, Keras and tensorflow-privacy are imported and configured.

Import ``tf``, ``keras`` and the tensorflow-privacy submodules from here, never directly:
- tensorflow-privacy's Keras optimizers wrap Keras 2 legacy optimizers, so the whole project uses
  tf-keras (Keras 2), selected by ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is first imported;
- ``import tensorflow_privacy`` fails on TF >= 2.16 (it imports the removed tf.estimator), so its
  package __init__ is skipped (``sys.skip_tf_privacy_import``) and submodules are imported alone.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ info/warning lines are noise here
sys.skip_tf_privacy_import = True  # type: ignore[attr-defined]


def _import_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter (oneDNN, CUDA probing) kept off stderr.

    TF 2.21 writes those lines before its logging is initialised, so TF_CPP_MIN_LOG_LEVEL does
    not reach them; file descriptor 2 is pointed at /dev/null for the import only. Python
    exceptions are unaffected. COVIDCT_TF_VERBOSE=1 shows everything.
    """
    if os.environ.get("COVIDCT_TF_VERBOSE") == "1":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
        import tf_keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_quietly()
import tensorflow as tf  # noqa: E402  (cached by now: no second start-up)
import tf_keras as keras  # noqa: E402

# pfor's notes ("Conv2DBackpropFilter uses a while_loop") and similar are not for users
tf.get_logger().setLevel("ERROR")

if not keras.__version__.startswith(tf.__version__.rsplit(".", 1)[0]):
    raise ImportError(
        f"tf-keras {keras.__version__} does not match TensorFlow {tf.__version__}: "
        "reinstall with `make venv` (versions are pinned in constraints.txt)"
    )

__all__ = ["keras", "tf"]
