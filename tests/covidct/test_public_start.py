"""The demo's public starting weights: present, intact, from a cohort other than the demo's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from covidct.config import load_config
from covidct.models import build_model
from data_prep.worker import SliceSettings

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo_public_weights.yaml"


def test_demo_starts_from_the_shipped_public_weights_and_they_load():
    cfg = load_config(DEMO)
    weights = ROOT / cfg.train.initial_weights
    provenance = json.loads(
        weights.with_name(weights.name.replace(".weights.h5", ".json")).read_text()
    )
    assert provenance["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    public = provenance["config"]
    # the public cohort is another cohort: its own seed, and the same model and image size
    assert public["synth"]["seed"] != cfg.synth.seed
    assert public["train"]["model"] == cfg.train.model
    assert public["prepare"]["slices"]["image_size"] == cfg.prepare.slices.image_size
    # ... and slices made the same way (a model trained on masked lungs expects masked lungs)
    for key in ("mask_outside_lungs", "crop", "window_level", "window_width"):
        default = getattr(SliceSettings(), key)
        assert public["prepare"]["slices"].get(key, default) == getattr(cfg.prepare.slices, key)
    assert public == yaml.safe_load((ROOT / "configs" / "pretrain_public.yaml").read_text())
    model = build_model(cfg.train.model, input_size=cfg.prepare.slices.image_size, seed=0)
    before = [w.copy() for w in model.get_weights()]
    model.load_weights(str(weights))
    assert any((a != b).any() for a, b in zip(model.get_weights(), before, strict=True))
