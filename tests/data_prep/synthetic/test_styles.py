"""Phantom styles: A is the original generator unchanged, B another site that differs measurably."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from covidct.cli import main
from data_prep.errors import ConfigError
from data_prep.readers.dicom import probe_file, read_series
from data_prep.synthetic.cohort import MARKER, SynthConfig, patient_rng, write_cohort
from data_prep.synthetic.phantom import Phantom, PhantomStyle, make_phantom

A, B = PhantomStyle.A, PhantomStyle.B


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _negatives(style: PhantomStyle, n: int = 4) -> list[Phantom]:
    return [
        make_phantom(
            patient_rng(2, i), n_slices=8, matrix=48, positive=False, burden="none", style=style
        )
        for i in range(n)
    ]


def _air_noise_sd(hu: np.ndarray) -> float:
    """Noise std in the air of the anterior corners (pure -1000 HU plus noise).

    Air noise is clipped at -1024 HU, so only deviations above -1000 are used: for symmetric
    noise their root mean square is the standard deviation.
    """
    dev = hu[:, :5, :5].astype(np.float64) + 1000.0
    return float(np.sqrt(np.mean(dev[dev > 0] ** 2)))


def _skin_overshoot(hu: np.ndarray) -> float:
    """Mean HU 2 pixels outside the anterior skin minus the corner air.

    A smooth kernel spreads the body into the air around it (> 0); a sharp kernel overshoots
    and leaves a darker rim (< 0).
    """
    rims = []
    for sl in hu:
        lab, n = ndimage.label(ndimage.binary_fill_holes(sl > -500))
        body = lab == 1 + int(np.argmax(ndimage.sum(lab > 0, lab, range(1, n + 1))))
        rows = np.nonzero(body.any(axis=1))[0]
        dist = ndimage.distance_transform_edt(~body)
        rim = (dist > 1.5) & (dist <= 2.5)
        rim[(rows[0] + rows[-1]) // 2 :] = False  # anterior half: the table is posterior
        rims.append(float(sl[rim].mean()))
    return float(np.mean(rims)) - float(hu[:, :5, :5].mean())


@pytest.fixture(scope="module")
def negatives() -> dict[PhantomStyle, list[Phantom]]:
    return {style: _negatives(style) for style in PhantomStyle}


@pytest.fixture(scope="module")
def cohort_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("style_b")
    write_cohort(out, SynthConfig(n_patients=4, n_slices=6, matrix=32, seed=9, workers=1, style=B))
    return out


# --- style A is the original generator ---------------------------------------------------------


def test_style_a_is_the_default_and_writes_the_same_files(tmp_path):
    default_config = SynthConfig(n_patients=3, n_slices=6, matrix=32, seed=5, workers=1)
    write_cohort(tmp_path / "default", default_config)
    write_cohort(tmp_path / "a", replace(default_config, style=A))
    write_cohort(tmp_path / "b", replace(default_config, style=B))
    default, a, b = (_files(tmp_path / name) for name in ("default", "a", "b"))
    assert default == a
    assert json.loads(a[MARKER])["config"]["style"] == "a"
    # Style B: same patients, labels and file names, other pixels.
    assert a["labels.csv"] == b["labels.csv"] and set(a) == set(b)
    pixels = [k for k in a if k.startswith(("dicom/", "nifti/"))]
    assert all(a[k] != b[k] for k in pixels)


def test_make_phantom_default_is_style_a_bit_for_bit():
    default = make_phantom(patient_rng(4, 0), n_slices=6, matrix=32, positive=True, burden="severe")
    a = make_phantom(
        patient_rng(4, 0), n_slices=6, matrix=32, positive=True, burden="severe", style=A
    )
    for name in ("hu", "lung_mask", "lesion_mask", "lesion_slices"):
        np.testing.assert_array_equal(getattr(default, name), getattr(a, name))
    assert (default.spacing, default.origin) == (a.spacing, a.origin)
    assert default.slice_thickness == default.spacing[0] and default.style is A


# --- style B differs in scanner, slices and anatomy --------------------------------------------


def test_style_b_has_more_noise_and_a_sharp_kernel(negatives):
    sd = {s: np.median([_air_noise_sd(p.hu) for p in negatives[s]]) for s in PhantomStyle}
    assert sd[B] > 1.3 * sd[A]
    # smooth kernel: the body spreads into the air; sharp kernel: a dark rim (edge overshoot)
    assert all(_skin_overshoot(p.hu) > -8 for p in negatives[A])
    assert all(_skin_overshoot(p.hu) < -15 for p in negatives[B])


def test_style_b_has_larger_lungs_in_the_matrix_and_slices_thinner_than_their_spacing(negatives):
    lung = {s: np.median([p.lung_mask.mean() for p in negatives[s]]) for s in PhantomStyle}
    assert lung[B] > 1.2 * lung[A]
    for p in negatives[A]:
        assert p.slice_thickness == p.spacing[0]
    for p in negatives[B]:
        assert p.slice_thickness is not None and p.slice_thickness < 0.8 * p.spacing[0]


def test_style_b_headers_carry_its_spacing_and_thickness_and_read_back_exactly(cohort_b):
    series = sorted((cohort_b / "dicom").glob("*/*/2_chest_axial"))
    assert len(series) == 3  # mixed formats: patients 0, 1 and 3 are DICOM
    for folder in series:
        headers = [probe_file(p) for p in sorted(folder.iterdir())]
        ds = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
        spacing = float(ds.SpacingBetweenSlices)
        assert float(ds.SliceThickness) < 0.8 * spacing
        vol = read_series(headers)
        assert vol.spacing[0] == pytest.approx(spacing) and vol.flags == []
        zs = sorted(float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in folder.iterdir())
        np.testing.assert_allclose(np.diff(zs), spacing)
    # NIfTI (patient 2) stores the spacing; the phantom behind it has gaps between slices
    burden = {r["patient_id"]: r["burden"] for r in csv.DictReader((cohort_b / "truth.csv").open())}
    ids = [r["patient_id"] for r in csv.DictReader((cohort_b / "labels.csv").open())]
    ph = make_phantom(
        patient_rng(9, 2),
        n_slices=6,
        matrix=32,
        positive=burden[ids[2]] != "none",
        burden=burden[ids[2]],
        style=B,
    )
    image: Any = nib.load(cohort_b / "nifti" / f"{ids[2]}.nii.gz")
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), ph.hu)
    assert image.header.get_zooms()[2] == pytest.approx(ph.spacing[0])
    assert ph.slice_thickness is not None and ph.slice_thickness < 0.8 * ph.spacing[0]


# --- style B lesions: ground glass where the truth says, none in negatives ---------------------


@pytest.mark.parametrize("burden", ["mild", "severe", "none"])
def test_style_b_lesion_mask_holds_ground_glass_and_negatives_have_none(burden):
    ph = make_phantom(
        patient_rng(31, 0),
        n_slices=12,
        matrix=48,
        positive=burden != "none",
        burden=burden,
        style=B,
    )
    assert ph.lung_mask is not None and ph.lesion_mask is not None
    np.testing.assert_array_equal(ph.lesion_slices, ph.lesion_mask.any(axis=(1, 2)))
    if burden == "none":
        assert not ph.lesion_mask.any()
        return
    assert ph.lesion_slices.any() and not ph.lesion_slices.all()
    assert not (ph.lesion_mask & ~ph.lung_mask).any()
    lesion = ph.hu[ph.lesion_mask]
    ground_glass = (lesion > -800) & (lesion < -300)
    # mostly ground glass (patches may have consolidated cores and septal lines)
    assert ground_glass.mean() > 0.6
    inner = ndimage.binary_erosion(ph.lung_mask, structure=np.ones((1, 3, 3)))
    around = inner & ~ndimage.binary_dilation(ph.lesion_mask, iterations=2)
    assert np.median(lesion) > np.median(ph.hu[around]) + 100


def test_style_b_cohort_labels_and_truth_agree(cohort_b):
    labels = {r["patient_id"]: r["label"] for r in csv.DictReader((cohort_b / "labels.csv").open())}
    assert sorted(labels.values()) == ["0", "0", "1", "1"]
    lesion: dict[str, int] = {}
    for row in csv.DictReader((cohort_b / "truth.csv").open()):
        lesion[row["patient_id"]] = lesion.get(row["patient_id"], 0) + int(row["lesion"])
        assert (row["burden"] == "none") == (labels[row["patient_id"]] == "0")
    for pid, label in labels.items():
        assert (lesion[pid] > 0) == (label == "1")


# --- the command line --------------------------------------------------------------------------


def _synth(out: Path, *extra: str) -> int:
    args = ["synth", "--out", str(out), "--patients", "2", "--slices", "4", "--matrix", "16"]
    return main([*args, "--workers", "1", "--formats", "nifti", *extra])


def test_cli_records_the_style_and_the_flag_overrides_the_config(tmp_path, capsys):
    assert _synth(tmp_path / "b", "--style", "b") == 0
    assert "style b" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / MARKER).read_text())["config"]["style"] == "b"
    assert _synth(tmp_path / "a", "--set", "synth.style=b", "--style", "a") == 0
    assert json.loads((tmp_path / "a" / MARKER).read_text())["config"]["style"] == "a"
    assert _synth(tmp_path / "cfg", "--set", "synth.style=b") == 0
    assert json.loads((tmp_path / "cfg" / MARKER).read_text())["config"]["style"] == "b"


def test_bad_style_exits_2_naming_the_allowed_values(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("synth:\n  style: c\n")
    assert _synth(tmp_path / "x", "--config", str(config)) == 2
    err = capsys.readouterr().err
    assert "synth.style" in err and "a, b" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        _synth(tmp_path / "y", "--style", "c")
    assert exc.value.code == 2
    assert "'a', 'b'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_write_cohort_rejects_an_unknown_style_string(tmp_path):
    with pytest.raises(ConfigError, match="style must be one of a, b"):
        write_cohort(tmp_path, SynthConfig(n_patients=1, style="c"))  # type: ignore[arg-type]
    # the plain value is accepted and recorded
    write_cohort(
        tmp_path / "ok",
        SynthConfig(n_patients=1, n_slices=4, matrix=16, workers=1, style="b"),  # type: ignore[arg-type]
    )
    assert json.loads((tmp_path / "ok" / MARKER).read_text())["config"]["style"] == "b"
