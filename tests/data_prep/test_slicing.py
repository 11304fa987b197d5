"""The lung views of prepare.slices: crop = lungs and mask_outside_lungs.

Geometry, the truth kept inside, and the same result from covidct prepare and from uploads.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from data_prep.intensity import to_uint8, window
from data_prep.slicing import (
    AIR_HU,
    CROP_MARGIN,
    crop_to_box,
    gray_lung_box,
    hu_lung_box,
    lung_area_fraction,
    lung_box,
)
from data_prep.synthetic.phantom import make_phantom
from data_prep.uploads import read_upload
from data_prep.volume import IntensityKind, Volume, affine_from_spacing
from data_prep.worker import SliceSettings, hu_volume_slices, image_slice


def test_box_is_square_in_millimetres_and_holds_the_mask_with_its_margin():
    mask = np.zeros((100, 120), bool)
    mask[30:50, 20:100] = True  # 20 rows x 80 columns
    y0, y1, x0, x1 = lung_box(mask, (1.0, 0.5))  # rows 1 mm, columns 0.5 mm
    side_rows_mm, side_cols_mm = (y1 - y0) * 1.0, (x1 - x0) * 0.5
    assert side_rows_mm == pytest.approx(side_cols_mm, abs=1.0)
    assert side_cols_mm == pytest.approx(80 * 0.5 * (1 + 2 * CROP_MARGIN), abs=1.0)
    assert y0 <= 30 and y1 >= 50 and x0 <= 20 - 80 * CROP_MARGIN + 1 and x1 >= 100
    assert lung_box(np.zeros((8, 8), bool), (1.0, 1.0)) is None


def test_crop_past_the_edge_is_filled():
    a = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    out = crop_to_box(a, (-1, 3, 2, 6), fill=-5.0)
    assert out.shape == (1, 4, 4)
    np.testing.assert_array_equal(out[0, 0], [-5, -5, -5, -5])  # row -1
    np.testing.assert_array_equal(out[0, 1], [2, 3, -5, -5])  # row 0, columns 2..5
    np.testing.assert_array_equal(out[0, 3, :2], [10, 11])


@pytest.fixture(scope="module")
def phantoms():
    out = []
    for i, burden in enumerate(("mild", "severe", "mild", "none")):
        rng = np.random.default_rng(100 + i)
        out.append(
            make_phantom(rng, n_slices=12, matrix=96, positive=burden != "none", burden=burden)
        )
    return out


def _volume(ph) -> Volume:
    return Volume(
        array=ph.hu.astype(np.float32),
        spacing=ph.spacing,
        affine=affine_from_spacing(ph.spacing),
        kind=IntensityKind.HU,
        patient_key="p",
    )


def test_every_lung_and_lesion_voxel_lies_inside_the_crop(phantoms):
    for ph in phantoms:
        box = hu_lung_box(ph.hu.astype(np.float32), ph.spacing)
        assert box is not None
        y0, y1, x0, x1 = box
        for truth in (ph.lung_mask, ph.lesion_mask):
            ys, xs = np.nonzero(truth.any(axis=0))
            if ys.size:
                assert ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1


def test_cropped_slices_show_the_lungs_larger(phantoms):
    # unmasked, so the lungs' share of the whole image is what the crop changes
    full = SliceSettings(image_size=64, mask_outside_lungs=False)
    cropped = SliceSettings(image_size=64, crop="lungs", mask_outside_lungs=False)
    for ph in phantoms:
        vol = _volume(ph)
        a, b = hu_volume_slices(vol, full), hu_volume_slices(vol, cropped)
        assert b.slices.shape == a.slices.shape and (b.start, b.stop) == (a.start, a.stop)
        assert a.box is None and b.box is not None
        # back to HU through the window: the lungs' share of the image grows (1.3x and more here)
        hu_a = a.slices.astype(np.float32) / 255 * 1500 - 1350
        hu_b = b.slices.astype(np.float32) / 255 * 1500 - 1350
        share_a = np.mean([lung_area_fraction(s) for s in hu_a])
        share_b = np.mean([lung_area_fraction(s) for s in hu_b])
        assert share_b > 1.2 * share_a


def test_a_crop_reaching_past_the_image_is_padded_with_air():
    hu = np.full((3, 40, 40), 40.0, np.float32)  # a body that fills the field of view
    hu[:, 1:39, 3:19] = -850.0  # lungs to within a pixel of its edge
    hu[:, 1:39, 21:37] = -850.0
    vol = Volume(hu, (5.0, 1.0, 1.0), affine_from_spacing((5.0, 1.0, 1.0)), IntensityKind.HU, "p")
    made = hu_volume_slices(vol, SliceSettings(image_size=40, crop="lungs"))
    y0, y1, _, _ = made.box
    assert y0 < 0 and y1 > 40  # the square box is larger than the image
    cropped = made.crop(hu)
    assert cropped[0, 0, 0] == AIR_HU


def test_exported_gray_slices_get_nearly_the_same_crop_as_their_hu(phantoms):
    for ph in phantoms:
        hu = ph.hu.astype(np.float32)
        mid = hu[len(hu) // 2]
        gray = to_uint8(window(mid, level=-600, width=1500))
        by_hu = hu_lung_box(mid[None], ph.spacing)
        by_gray = gray_lung_box(gray)
        assert by_hu is not None and by_gray is not None
        # a PNG has no HU: Otsu's cut stands in for -400 HU; boxes agree within a few pixels
        assert np.max(np.abs(np.subtract(by_hu, by_gray))) <= 4


def test_uploads_use_the_same_crop(phantoms):
    settings = SliceSettings(image_size=48, crop="lungs")
    ph = phantoms[0]
    vol = _volume(ph)
    mid = ph.hu[len(ph.hu) // 2].astype(np.float32)
    png = io.BytesIO()
    Image.fromarray(to_uint8(window(mid, level=-600, width=1500))).save(png, "PNG")
    scan = read_upload([("s.png", png.getvalue())], settings)
    gray_vol = Volume(
        np.asarray(Image.open(io.BytesIO(png.getvalue())), np.float32)[None],
        (np.nan, np.nan, np.nan),
        np.eye(4),
        IntensityKind.GRAY8,
        "p",
    )
    np.testing.assert_array_equal(scan.slices[0], image_slice(gray_vol, settings))
    # the viewer shows what the model saw, so Grad-CAM lines up
    np.testing.assert_array_equal(scan.display[0], scan.slices[0])
    made = hu_volume_slices(vol, settings)
    assert made.slices.shape[1:] == (48, 48)


def test_prepare_and_uploads_give_identical_cropped_slices(cohort, tmp_path):
    from data_prep.pipeline import PrepConfig, prepare

    settings = SliceSettings(image_size=32, crop="lungs", mask_outside_lungs=True)
    out = tmp_path / "prep"
    prepare(
        [cohort], out, config=PrepConfig(slices=settings, workers=1), labels=[cohort / "labels.csv"]
    )
    meta = (out / "dataset.json").read_text()
    assert '"crop": "lungs"' in meta and '"mask_outside_lungs": true' in meta
    shards = [np.load(p) for p in sorted((out / "slices").glob("*.npy"))]
    nifti = sorted((cohort / "nifti").glob("*.nii.gz"))[0]
    series = sorted(p for p in (cohort / "dicom").glob("*/*/*") if p.name == "2_chest_axial")[0]
    for files in (
        [(nifti.name, nifti.read_bytes())],
        [(p.name, p.read_bytes()) for p in sorted(series.iterdir())],
    ):
        scan = read_upload(files, settings)
        assert any(s.shape == scan.slices.shape and np.array_equal(s, scan.slices) for s in shards)
        # the viewer shows the same crop at the scan's own resolution (square in mm)
        assert scan.display.shape[0] == scan.slices.shape[0]
        assert scan.display.shape[1] == pytest.approx(scan.display.shape[2], abs=2)


def test_masking_keeps_lungs_and_lesions_and_blanks_the_body(phantoms):
    # the phantoms' own matrix: pixels line up with truth
    plain = SliceSettings(image_size=96, mask_outside_lungs=False)
    masked = SliceSettings(image_size=96, mask_outside_lungs=True)
    air = int(to_uint8(window(np.float32(AIR_HU), level=-600, width=1500)))
    same = {"lesion": [0, 0], "mild": [0, 0], "lung": [0, 0]}
    blank = [0, 0]
    for ph in phantoms:
        vol = _volume(ph)
        a, b = hu_volume_slices(vol, plain), hu_volume_slices(vol, masked)
        truths = [("lesion", ph.lesion_mask), ("lung", ph.lung_mask)]
        if ph.burden == "mild":
            truths.append(("mild", ph.lesion_mask))
        for name, truth in truths:
            t = truth[a.start : a.stop]
            same[name][0] += int(np.sum(a.slices[t] == b.slices[t]))
            same[name][1] += int(t.sum())
        dense = ph.hu[a.start : a.stop] > 100  # bone, heart, great vessels, table
        blank[0] += int(np.sum(b.slices[dense] == air))
        blank[1] += int(dense.sum())
        assert np.mean(a.slices[dense] == air) < 0.01
    # ground glass inside the lungs stays; dense consolidation at the wall may go with it
    assert same["lesion"][1] > 100 and same["lesion"][0] / same["lesion"][1] > 0.6
    assert same["mild"][1] > 20 and same["mild"][0] / same["mild"][1] > 0.8
    assert same["lung"][0] / same["lung"][1] > 0.9
    assert blank[0] / blank[1] > 0.97


def test_masking_an_exported_gray_slice_agrees_with_its_hu(phantoms):
    for ph in phantoms:
        mid = ph.hu[len(ph.hu) // 2].astype(np.float32)
        gray = to_uint8(window(mid, level=-600, width=1500))
        vol = Volume(mid[None], ph.spacing, affine_from_spacing(ph.spacing), IntensityKind.HU, "p")
        gvol = Volume(
            gray[None].astype(np.float32), (np.nan,) * 3, np.eye(4), IntensityKind.GRAY8, "p"
        )
        settings = SliceSettings(image_size=96, lung_only=False, mask_outside_lungs=True)
        by_hu = hu_volume_slices(vol, settings).slices[0]
        by_gray = image_slice(gvol, settings)
        kept_hu, kept_gray = by_hu != by_hu.min(), by_gray != by_gray.min()
        assert np.mean(kept_hu == kept_gray) > 0.97
