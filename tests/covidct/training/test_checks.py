"""What training refuses or warns about before anything is counted (``covidct.training.checks``),
each check on its own; ``tests/covidct/test_train.py`` checks that ``train`` calls them before
the ledger counts a run."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from covidct.checkpoint import ResumeError
from covidct.config import ConfigError
from covidct.data.units import Units
from covidct.privacy.modes import ClippingMode
from covidct.privacy.plan import plan_privacy
from covidct.train_config import TrainConfig
from covidct.training.checks import (
    check_clipping,
    check_model,
    check_same_mechanism,
    check_slices_fit,
    pipeline_ipus,
    unit_basis_warning,
)

BASE = TrainConfig(epochs=2)


def _units(bases: list[str]) -> Units:
    n = len(bases)
    ids = [f"P{i}" for i in range(n)]
    return Units(ids, ids, np.zeros(n, np.float32), [[("f", i)] for i in range(n)], bases)


def test_units_that_are_not_persons_are_named_before_training():
    assert unit_basis_warning(_units(["dicom_patient_id"] * 3)) is None
    mixed = unit_basis_warning(_units(["dicom_patient_id", "nifti_file", "nifti_file"]))
    assert mixed is not None and "2 of the 3 training units" in mixed and "NIfTI file" in mixed
    none = unit_basis_warning(_units(["nifti_file"] * 2))
    assert none is not None and "none of the 2 training units" in none


def test_model_settings_that_cannot_be_honoured_are_refused():
    for bad, word in (
        ({"ema": 1.0}, "ema"),
        ({"augment_views": 0}, "augment_views"),
        ({"augment_views": 2}, "train.augment is off"),
        ({"augment": True}, "unaugmented"),  # the default model trains on cached features
        ({"pipeline_stages": 2, "clipping": ClippingMode.PER_LAYER}, "pipeline_stages"),
    ):
        with pytest.raises(ConfigError, match=word):
            check_model(replace(BASE, **bad))
    check_model(replace(BASE, model="gn_cnn_small", augment=True, augment_views=2))


def test_stages_need_per_layer_clipping_and_take_one_ipu_each():
    with pytest.raises(ConfigError, match="add --clipping per-layer"):
        check_clipping(replace(BASE, pipeline_stages=2))
    with pytest.raises(ConfigError, match=">= 0"):
        check_clipping(replace(BASE, pipeline_stages=-1))
    staged = replace(BASE, pipeline_stages=3, clipping=ClippingMode.PER_LAYER)
    check_clipping(staged)
    assert pipeline_ipus(staged) == 3 and pipeline_ipus(BASE) == 1


def test_a_resume_that_would_change_the_mechanism_is_refused(tmp_path):
    plan = plan_privacy(n_units=100, config=BASE, target_epsilon=3.0)
    same = {"noise_multiplier": plan.noise_multiplier, "sampling_rate": 1.0, "delta": plan.delta}
    check_same_mechanism(tmp_path, same, plan)
    check_same_mechanism(tmp_path, {}, plan)  # a plan from before covidct stored them
    with pytest.raises(ResumeError, match="noise_multiplier"):
        check_same_mechanism(tmp_path, {**same, "noise_multiplier": 1.0}, plan)


def test_attenuation_refuses_slices_without_hu_and_notes_unmasked_ones(prep, tmp_path):
    said: list[str] = []
    check_slices_fit(BASE, prep, said.append)  # masked HU slices: nothing to say
    assert said == []
    data = tmp_path / "prep"
    shutil.copytree(prep, data, ignore=shutil.ignore_patterns("features"))
    meta = json.loads((data / "dataset.json").read_text())
    meta["slices"]["mask_outside_lungs"] = False
    (data / "dataset.json").write_text(json.dumps(meta))
    check_slices_fit(BASE, data, said.append)
    assert len(said) == 1 and "mask_outside_lungs" in said[0]
    manifest = data / "manifest.csv"
    manifest.write_text(manifest.read_text().replace(",hu,", ",gray8,"))
    with pytest.raises(ConfigError, match=r"train\.model=scattering"):
        check_slices_fit(BASE, data, said.append)
    check_slices_fit(replace(BASE, model="scattering"), data, said.append)  # needs no HU
