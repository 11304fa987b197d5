"""Slice images: 8-bit display values (never HU), from disk or memory, and clear refusals."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.errors import NotAnImageError, UnsupportedScanError
from data_prep.readers.images import is_image_name, read_image
from data_prep.volume import IntensityKind


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> bytes:
    Image.fromarray(array, mode=mode).save(path)
    return path.read_bytes()


def test_a_gray_png_is_one_gray8_slice_from_disk_and_from_memory(tmp_path: Path):
    arr = np.arange(32 * 32, dtype=np.uint32).reshape(32, 32).astype(np.uint8)
    data = _save(tmp_path / "s.png", arr)
    vol = read_image(tmp_path / "s.png", patient_key="p", label=1)
    assert vol.kind is IntensityKind.GRAY8 and vol.array.shape == (1, 32, 32)
    np.testing.assert_array_equal(vol.array[0], arr)
    assert vol.flags == [] and vol.label == 1 and vol.positions is None
    mem = read_image(Path("upload.png"), patient_key="p", data=data)
    np.testing.assert_array_equal(mem.array, vol.array)


def test_colour_and_16_bit_images_are_converted_and_flagged(tmp_path: Path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    vol = read_image(Path("c.png"), patient_key="p", data=_save(tmp_path / "c.png", rgb))
    assert "converted to grayscale" in vol.flags[0]
    wide = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    vol16 = read_image(Path("w.png"), patient_key="p", data=buf.getvalue())
    assert vol16.array.max() == pytest.approx(255.0) and "16-bit" in vol16.flags[0]


def test_bytes_that_are_no_image_and_tiny_images_are_refused(tmp_path: Path):
    with pytest.raises(NotAnImageError, match="cannot decode image"):
        read_image(Path("x.png"), patient_key="p", data=b"\x89PNG but not really")
    tiny = _save(tmp_path / "t.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(UnsupportedScanError, match="too small"):
        read_image(Path("t.png"), patient_key="p", data=tiny)
    assert is_image_name(Path("a.JPG")) and not is_image_name(Path("a.dcm"))
