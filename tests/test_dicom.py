"""DICOM through the one image reader: real pydicom test files and a real X-ray as DICOM."""
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cxr.data.images import ImageReadError, read_image
from hostile import xray_dicom


def xray_as_dicom(png, path, monochrome1: bool, slope: float = 2.0, intercept: float = -100.0):
    """A real NIH X-ray stored as 16-bit DICOM, as a modality would write it."""
    pixels = np.asarray(Image.open(png)).astype(np.float64)
    stored = pixels * 16  # 12-bit detector range
    if monochrome1:
        stored = stored.max() - stored  # high values dark
    raw = np.round((stored - intercept) / slope)
    ds = xray_dicom(raw, PhotometricInterpretation="MONOCHROME1" if monochrome1 else "MONOCHROME2",
                    RescaleSlope=slope, RescaleIntercept=intercept)
    ds.save_as(path, enforce_file_format=True)
    return pixels


@pytest.mark.parametrize("monochrome1", [False, True])
def test_real_xray_as_dicom_reads_back_as_the_png(tmp_path, sample_images, monochrome1):
    original = xray_as_dicom(sample_images[2], tmp_path / "x.dcm", monochrome1)
    got = read_image(tmp_path / "x.dcm")
    assert got.dtype == np.uint8 and got.shape == original.shape
    # Same picture up to the min-max stretch (MONOCHROME1 inverted back).
    assert np.corrcoef(got.ravel(), original.ravel())[0, 1] > 0.999


def test_pydicom_ct_file_and_its_monochrome1_twin(tmp_path):
    path = get_testdata_file("CT_small.dcm")
    plain = read_image(path)
    assert plain.shape == (128, 128) and plain.dtype == np.uint8 and plain.std() > 5
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    np.testing.assert_array_equal(read_image(tmp_path / "mono1.dcm"), 255 - plain)


def test_dicom_without_pixel_data(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(ImageReadError, match="DICOM has no pixel data"):
        read_image(tmp_path / "nopixels.dcm")
