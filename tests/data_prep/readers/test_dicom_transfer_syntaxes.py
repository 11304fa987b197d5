"""Every common transfer syntax decodes to the same HU as the uncompressed original."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from data_prep.errors import PixelDecodeError
from data_prep.readers.dicom import probe_file, read_series

CT = Path(get_testdata_file("CT_small.dcm", download=False))


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_lossless_compressed_ct_decodes_to_identical_hu(tmp_path, syntax):
    ds = pydicom.dcmread(CT)
    ds.compress(syntax)
    out = tmp_path / "compressed.dcm"
    ds.save_as(out)
    assert str(pydicom.dcmread(out).file_meta.TransferSyntaxUID) == str(syntax)
    original = read_series([probe_file(CT)]).array
    decoded = read_series([probe_file(out)]).array
    np.testing.assert_array_equal(decoded, original)


def test_jpeg_lossless_ct_decodes_to_identical_hu(tmp_path):
    # pydicom has no JPEG Lossless encoder; GDCM (python-gdcm, a pydicom decoder) encodes it
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(CT))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    out = tmp_path / "jpeg_lossless.dcm"
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(out))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    original = read_series([probe_file(CT)]).array
    np.testing.assert_array_equal(read_series([probe_file(out)]).array, original)


def test_corrupt_compressed_pixels_give_a_decode_error(tmp_path):
    ds = pydicom.dcmread(CT)
    ds.compress(JPEG2000Lossless)
    out = tmp_path / "corrupt.dcm"
    ds.save_as(out)
    raw = bytearray(out.read_bytes())
    # zero the JPEG 2000 image header (SIZ segment after the SOC marker): the DICOM header
    # stays valid, the pixels cannot be decoded by any plugin
    soc_siz = raw.find(b"\xff\x4f\xff\x51")
    assert soc_siz > 0
    raw[soc_siz + 4 : soc_siz + 40] = b"\x00" * 36
    out.write_bytes(bytes(raw))
    with pytest.raises(PixelDecodeError, match="cannot be decoded") as info:
        read_series([probe_file(out)])
    assert "\n" not in str(info.value)  # one line for the report and the console
