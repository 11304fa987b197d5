"""The one TensorFlow import: Keras 2 (what tensorflow-privacy needs), the attack module
installed, and C++ start-up notes silenced without hiding Python errors."""

from __future__ import annotations

import os

from covidct.tfsetup import keras, privacy_tests, quiet_stderr, tf


def test_keras_is_the_keras_2_that_matches_tensorflow():
    assert keras.__version__.startswith("2.")
    assert keras.__version__.rsplit(".", 1)[0] == tf.__version__.rsplit(".", 1)[0]
    attack, structures = privacy_tests()
    assert hasattr(attack, "run_attacks") and hasattr(structures, "AttackInputData")


def test_quiet_stderr_hides_fd_2_only_inside_and_restores_it(capfd, monkeypatch):
    monkeypatch.delenv("COVIDCT_TF_VERBOSE", raising=False)
    with quiet_stderr():
        os.write(2, b"hidden-note\n")
    os.write(2, b"shown-note\n")
    err = capfd.readouterr().err
    assert "shown-note" in err and "hidden-note" not in err
