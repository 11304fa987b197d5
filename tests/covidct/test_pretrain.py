"""Public pretraining: covidct pretrain writes weights with their provenance, and a private run
that starts from them checks them, records their hashes and says what the guarantee leaves out."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from covidct.cli import main
from covidct.config import ConfigError
from covidct.data.units import DataError
from covidct.privacy.ledger import read_ledger
from covidct.public_start import provenance_path
from covidct.train import train
from covidct.train_config import TrainConfig
from data_prep.pipeline import PrepConfig, prepare
from data_prep.synthetic.cohort import CohortFormat, SynthConfig, write_cohort
from data_prep.worker import SliceSettings

FAST = TrainConfig(epochs=6, seed=1)  # the default model (attenuation features)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def public_prep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another cohort (its own seed: none of the private patients), prepared like ``prep``."""
    root = tmp_path_factory.mktemp("public")
    write_cohort(
        root / "cohort",
        SynthConfig(
            n_patients=30, n_slices=6, matrix=32, seed=11, formats=CohortFormat.NIFTI, workers=1
        ),
    )
    prepare(
        [root / "cohort"],
        root / "prep",
        config=PrepConfig(slices=SliceSettings(image_size=32), workers=1),
        labels=[root / "cohort" / "labels.csv"],
    )
    return root / "prep"


@pytest.fixture(scope="module")
def pretrained(public_prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("weights") / "public_scatter"
    runs = out.parent / "runs"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(
            [
                *("pretrain", "--data", str(public_prep), "--out", str(out), "--runs", str(runs)),
                *("--set", "train.epochs=6", "--no-progress"),
            ]
        )
    assert rc == 0
    assert "train.initial_weights=" in printed.getvalue()  # it tells how to use them
    return out.with_name(out.name + ".weights.h5")


def test_pretrain_writes_the_weights_and_a_provenance_that_names_the_public_data(
    pretrained, public_prep
):
    prov = json.loads(provenance_path(pretrained).read_text())
    assert provenance_path(pretrained).name == "public_scatter.json"
    assert prov["sha256"] == _sha(pretrained)
    assert prov["model"] == "attenuation" and prov["image_size"] == 32
    assert prov["public_data"]["manifest_sha256"] == _sha(public_prep / "manifest.csv")
    assert prov["public_data"]["patients"] == 30
    scans = sorted(_sha(p) for p in (public_prep / "slices").glob("*.npy"))
    assert prov["scan_sha256"] == scans
    assert len(prov["standardise"]["mean"]) == len(prov["standardise"]["variance"]) == 30
    assert "WITHOUT differential privacy" in prov["what"]


def test_a_private_run_starts_from_them_and_records_both_hashes(pretrained, prep, tmp_path):
    from covidct.tfsetup import keras

    prov = json.loads(provenance_path(pretrained).read_text())
    cfg = replace(FAST, epochs=1, learning_rate=0.0, initial_weights=str(pretrained))
    result = train(prep, config=cfg, target_epsilon=3.0, runs_dir=tmp_path, run_id="p")
    meta = json.loads((result.run_dir / "run.json").read_text())
    start = meta["initial_weights"]
    assert start["sha256"] == prov["sha256"]
    assert start["public_manifest_sha256"] == prov["public_data"]["manifest_sha256"]
    note = next(n for n in result.privacy.notes if prov["sha256"] in n)
    assert prov["public_data"]["manifest_sha256"] in note
    assert "WITHOUT differential privacy" in note and "says nothing about" in note
    report = (result.run_dir / "privacy_report.md").read_text()
    assert prov["public_data"]["manifest_sha256"] in report
    # learning rate 0: the saved head is the pretrained one, standardised with the PUBLIC
    # constants that came with it (not this dataset's validation statistics)
    import covidct.features  # noqa: F401
    from covidct.models import build_head

    model = keras.models.load_model(result.run_dir / "model.keras", compile=False)
    std = prov["standardise"]
    head = build_head("attenuation", mean=std["mean"], variance=std["variance"])
    head.load_weights(str(pretrained))
    for a, b in zip(
        model.get_layer("logit").get_weights(), head.get_layer("logit").get_weights(), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)  # the EMA's rounding only
    assert np.abs(head.get_layer("logit").get_weights()[0]).sum() > 0  # it did learn something
    norm = model.get_layer("standardise")
    np.testing.assert_allclose(np.ravel(norm.input_mean), std["mean"], rtol=1e-6, atol=1e-6)
    assert any("public starting weights" in n for n in result.privacy.notes)


def test_pretraining_on_the_private_dataset_itself_is_refused(pretrained, public_prep, tmp_path):
    """The public data is the private data here: every scan is shared, so the run is refused
    before anything is counted."""
    private = tmp_path / "private_prep"
    shutil.copytree(public_prep, private)
    before = len(read_ledger(private).entries)
    cfg = replace(FAST, initial_weights=str(pretrained))
    with pytest.raises(DataError, match="byte for byte"):
        train(private, config=cfg, target_epsilon=3.0, runs_dir=tmp_path, run_id="x")
    assert len(read_ledger(private).entries) == before
    assert not (tmp_path / "x").exists()


def test_changed_or_mismatched_weights_are_refused(pretrained, prep, tmp_path):
    copy = tmp_path / "w.weights.h5"
    shutil.copy(pretrained, copy)
    prov = json.loads(provenance_path(pretrained).read_text())
    (tmp_path / "w.json").write_text(json.dumps(prov))
    with open(copy, "ab") as fh:
        fh.write(b"\0")
    cfg = replace(FAST, initial_weights=str(copy))
    with pytest.raises(DataError, match="does not match its provenance"):
        train(prep, config=cfg, target_epsilon=3.0, runs_dir=tmp_path)
    shutil.copy(pretrained, copy)
    (tmp_path / "w.json").write_text(json.dumps({**prov, "model": "gn_cnn_small"}))
    with pytest.raises(ConfigError, match="gn_cnn_small"):
        train(prep, config=cfg, target_epsilon=3.0, runs_dir=tmp_path)
    (tmp_path / "w.json").unlink()  # a head without its standardisation constants
    with pytest.raises(DataError, match="no provenance record"):
        train(prep, config=cfg, target_epsilon=3.0, runs_dir=tmp_path)
    missing = replace(FAST, initial_weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(DataError, match="not found"):
        train(prep, config=missing, target_epsilon=3.0, runs_dir=tmp_path)
    assert not any(p.name != "w.weights.h5" for p in tmp_path.iterdir())  # no run folder
