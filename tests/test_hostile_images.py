"""The one image reader against hostile files: refused before their cost is paid, one line each."""
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from conftest import ROOT, project_env
from cxr.data.images import (MAX_FILE_BYTES, ImageReadError, UnsupportedImageError, read_image,
                             _stretch_to_uint8)
import hostile


@pytest.fixture(scope="module")
def xray(sample_images):
    return np.asarray(Image.open(sample_images[3]).convert("L"))


def _peak_rss_growth_mb(tmp_path, data: bytes) -> tuple[float, str]:
    """Peak RSS growth of a fresh process while it reads ``data`` (already in memory)."""
    (tmp_path / "input").write_bytes(data)
    code = (
        "import resource, sys\n"
        "from cxr.data.images import read_image, ImageReadError\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "import pydicom.pixels, PIL.PngImagePlugin\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    outcome = 'read %s' % (read_image(data).shape,)\n"
        "except ImageReadError as e:\n    outcome = 'refused: %s' % e\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
        "print(outcome)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "input")], capture_output=True, text=True,
                         env=project_env(ROOT), check=True).stdout.splitlines()
    return float(out[0]), out[1]


def test_16_bit_png_at_the_pixel_limit_is_read_without_float64_copies(tmp_path):
    growth, outcome = _peak_rss_growth_mb(tmp_path, hostile.png16_near_limit(6700, 6700))
    assert outcome == "read (6700, 6700)"
    # 45 Mpx: 86 MB as 16-bit, 43 MB as 8-bit. Whole-image float64 (as before) peaked ~1 GB.
    assert growth < 320, f"peak RSS grew {growth:.0f} MB"


def test_deflated_dicom_bomb_is_refused_after_inflating_at_most_the_budget(tmp_path):
    bomb = hostile.deflated_dicom_bomb(512)
    assert len(bomb) < 1 << 20
    growth, outcome = _peak_rss_growth_mb(tmp_path, bomb)
    assert outcome.startswith("refused: deflated DICOM inflates past")
    assert growth < 64, f"peak RSS grew {growth:.0f} MB"   # inflated 1 MB at a time, then dropped


def test_deflated_dicom_within_budget_is_read(xray):
    ds = hostile.xray_dicom(xray.astype(np.uint16) * 16, pydicom.uid.DeflatedExplicitVRLittleEndian)
    got = read_image(hostile.dicom_bytes(ds))
    assert np.corrcoef(got.ravel(), xray.ravel())[0, 1] > 0.999


def test_dicom_header_announcing_gigapixels_is_refused_before_decoding():
    with pytest.raises(ImageReadError, match=r"60000x60000, over the 45000000-pixel limit"):
        read_image(hostile.dicom_huge_header())


def test_multi_frame_dicom_is_refused_from_its_header(xray):
    ds = hostile.xray_dicom(np.stack([xray, xray]).reshape(-1, xray.shape[1]), NumberOfFrames=2)
    ds.Rows = xray.shape[0]
    with pytest.raises(ImageReadError, match="2 frame"):
        read_image(hostile.dicom_bytes(ds))


def test_text_rescale_slope_is_one_line_naming_the_element(xray):
    with pytest.raises(ImageReadError, match="DICOM RescaleSlope is 'one point five', expected a finite number"):
        read_image(hostile.dicom_text_slope(xray))


def test_windowing_applied_in_blocks_equals_pydicom_on_the_whole_image(xray):
    ds = hostile.xray_dicom(xray.astype(np.uint16) * 16 + 100, RescaleSlope=0.5, RescaleIntercept=-30,
                            WindowCenter=1200, WindowWidth=1500)
    ds = pydicom.dcmread(__import__("io").BytesIO(hostile.dicom_bytes(ds)))
    whole = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    expected = np.round((whole - whole.min()) * (255.0 / (whole.max() - whole.min()))).astype(np.uint8)
    np.testing.assert_array_equal(read_image(hostile.dicom_bytes(ds)), expected)


def test_block_stretch_equals_the_whole_image_stretch():
    a = np.random.default_rng(0).integers(0, 4096, size=(3000, 700), dtype=np.uint16)
    f = a.astype(np.float64)
    expected = np.round((f - f.min()) * (255.0 / (f.max() - f.min()))).astype(np.uint8)
    np.testing.assert_array_equal(_stretch_to_uint8(a), expected)


@pytest.mark.parametrize("name,data", [
    ("eps", hostile.EPS),
    ("bmp", None), ("tiff", None), ("gif", None), ("webp", None),
])
def test_only_png_jpeg_and_dicom_are_decoded(xray, name, data):
    if data is None:
        buf = __import__("io").BytesIO()
        Image.fromarray(xray).save(buf, name.upper())
        data = buf.getvalue()
    with pytest.raises(UnsupportedImageError, match="^not a PNG, JPEG or DICOM file$"):
        read_image(data)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_as_viewers_show_it(xray, orientation):
    wide = xray[:, : xray.shape[1] * 3 // 4]   # not square, so a quarter turn shows in the shape
    got = read_image(hostile.rotated_jpeg(wide, orientation)).astype(np.float64)
    assert got.shape == wide.shape
    assert np.corrcoef(got.ravel(), wide.ravel())[0, 1] > 0.99


def test_oversized_file_is_refused_without_reading_it(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)   # sparse: no disk used
    with pytest.raises(ImageReadError, match=r"^file is \d+ MB, over the \d+ MB limit$"):
        read_image(big)


def test_fifo_device_and_directory_are_refused_without_reading(tmp_path):
    import os
    os.mkfifo(tmp_path / "pipe.png")   # opening it for reading would block until a writer came
    (tmp_path / "zero.png").symlink_to("/dev/zero")   # endless: reading it grew to 23.7 GB
    (tmp_path / "folder.png").mkdir()
    for name, kind in (("pipe.png", "a FIFO"), ("zero.png", "a character device"), ("folder.png", "a directory")):
        with pytest.raises(ImageReadError, match=rf"^not a regular file \({kind}\)$"):
            read_image(tmp_path / name)


def test_jpeg_with_thousands_of_empty_scans_is_refused_before_decoding(xray):
    import io
    import time
    buf = io.BytesIO()
    Image.fromarray(xray).save(buf, "JPEG", quality=90, progressive=True)
    assert read_image(buf.getvalue()).shape == xray.shape   # a real progressive JPEG (about 10 scans) reads
    started = time.perf_counter()
    with pytest.raises(ImageReadError, match=r"^JPEG has 10\d{3} scans, over the 64 a real image uses"):
        read_image(hostile.jpeg_scan_bomb(buf.getvalue(), 10_000))
    assert time.perf_counter() - started < 0.5   # decoding it took 54 s of CPU at 6700 px


def test_rle_dicom_is_read_exactly_and_an_rle_bomb_refused_before_pydicom_builds_it(tmp_path, xray):
    from pydicom.uid import RLELossless
    raw = hostile.xray_dicom(xray)
    rle = hostile.xray_dicom(xray)
    rle.compress(RLELossless)
    np.testing.assert_array_equal(read_image(hostile.dicom_bytes(rle)), read_image(hostile.dicom_bytes(raw)))
    bomb = hostile.rle_dicom_bomb(repeat_pairs=2_000_000)   # 8 MB that pydicom would decode to 512 MB
    growth, outcome = _peak_rss_growth_mb(tmp_path, bomb)
    assert outcome == "refused: DICOM RLE segment decodes to more than the header's 4096 pixels (decompression bomb?)"
    assert growth < 100, growth


def test_fuzzed_png_jpeg_and_dicom_either_read_or_raise_one_image_read_error():
    """Thousands of seeded truncations and overwrites of real X-ray files: nothing but an image
    or an ``ImageReadError`` comes out (a truncated JPEG header was an OSError)."""
    from conftest import LOWRES
    seeds = hostile.fuzz_seeds(sorted((LOWRES / "images").glob("*.png"))[:4])
    outcomes = {"read": 0, "refused": 0}
    for index, (kind, data) in enumerate(seeds):
        for mutant in hostile.mutants(data, 150, seed=index):
            try:
                pixels = read_image(mutant)
            except ImageReadError as e:
                assert str(e) and "\n" not in str(e), kind
                outcomes["refused"] += 1
            else:
                assert pixels.dtype == np.uint8 and pixels.ndim == 2 and pixels.size, kind
                outcomes["read"] += 1
    assert sum(outcomes.values()) == 4 * 7 * 150 and min(outcomes.values()) > 100   # both outcomes exercised
