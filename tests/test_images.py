"""The one image reader on real X-rays and on odd or broken files made from them."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cxr.data.images import ImageReadError, read_image, resize_image


@pytest.fixture(scope="module")
def xray(sample_images) -> np.ndarray:
    return np.asarray(Image.open(sample_images[0]))


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_real_png_reads_as_uint8_grayscale(sample_images):
    a = read_image(sample_images[0])
    assert a.dtype == np.uint8 and a.shape == (256, 256)
    assert a.std() > 10  # a real radiograph, not a blank


def test_path_and_bytes_give_identical_pixels(sample_images):
    assert np.array_equal(read_image(sample_images[1]), read_image(sample_images[1].read_bytes()))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "CMYK"])
def test_colour_modes_become_the_same_grayscale(xray, mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    rgb = Image.fromarray(xray).convert("RGB")
    # An adaptive palette holds every gray level exactly, as a real palette X-ray would.
    img = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256) if mode == "P" else rgb.convert(mode)
    got = read_image(_encode(img, fmt))
    assert got.shape == xray.shape and got.dtype == np.uint8
    tolerance = 12 if fmt == "JPEG" else 1
    assert np.abs(got.astype(int) - xray.astype(int)).mean() < tolerance


def test_16_bit_png_is_scaled_to_8_bit(xray):
    deep = (xray.astype(np.uint16) * 16 + 100)  # 12-bit data, as detectors write it
    got = read_image(_encode(Image.fromarray(deep)))
    assert got.dtype == np.uint8 and got.min() == 0 and got.max() == 255
    assert np.corrcoef(got.ravel(), xray.ravel())[0, 1] > 0.999


def test_jpeg_named_png_is_read_by_content(tmp_path, xray):
    path = tmp_path / "actually_jpeg.png"
    path.write_bytes(_encode(Image.fromarray(xray), "JPEG", quality=95))
    assert read_image(path).shape == xray.shape


def test_one_pixel_and_non_square_images(xray):
    assert read_image(_encode(Image.fromarray(xray[:1, :1]))).shape == (1, 1)
    tall = read_image(_encode(Image.fromarray(xray[:, :100])))
    assert tall.shape == (256, 100)
    assert resize_image(tall, 64).shape == (64, 64)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid-header PNG that claims a huge size (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"this is not an image\n", "not a PNG, JPEG or DICOM file"),
    (_png_claiming(30000, 30000), "decompression bomb"),
])
def test_bad_bytes_raise_one_line_reasons(data, reason):
    with pytest.raises(ImageReadError, match=reason) as e:
        read_image(data)
    assert "\n" not in str(e.value)


def test_truncated_png_is_rejected(sample_images):
    data = sample_images[0].read_bytes()
    with pytest.raises(ImageReadError, match="corrupt PNG"):
        read_image(data[: len(data) // 2])


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="cannot read file"):
        read_image(tmp_path / "nope.png")


def test_resize_is_antialiased_not_nearest(xray):
    small = resize_image(xray, 64)
    assert small.shape == (64, 64) and small.dtype == np.uint8
    block_mean = xray.reshape(64, 4, 64, 4).mean(axis=(1, 3))
    assert np.abs(small - block_mean).mean() < np.abs(xray[::4, ::4] - block_mean).mean()


def _pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def test_libspng_and_opencv_read_every_bundled_xray_exactly_as_pillow(sample_images):
    """predict and serve decode with libspng, the resize workers with OpenCV: the same pixels."""
    from cxr.data.images import _read_png_gray8, decode_png_opencv
    for path in sample_images:
        data = path.read_bytes()
        fast = _read_png_gray8(data)
        assert fast is not None, path.name
        np.testing.assert_array_equal(fast, _pillow_pixels(data))
        np.testing.assert_array_equal(_read_png_gray8(data, decode_png_opencv), fast)


@pytest.mark.parametrize("variant", ["16-bit", "rgb", "exif"])
def test_other_pngs_are_left_to_pillow(xray, variant):
    from cxr.data.images import _read_png_gray8
    img = Image.fromarray(xray)
    if variant == "16-bit":
        data = _encode(Image.fromarray(xray.astype(np.uint16) * 200))
    elif variant == "rgb":
        data = _encode(img.convert("RGB"))
    else:
        exif = Image.Exif()
        exif[0x0112] = 3  # stored turned 180 degrees: Pillow turns it back
        data = _encode(img.rotate(180), exif=exif)
    assert _read_png_gray8(data) is None
    got = read_image(data)
    assert np.corrcoef(got.ravel(), xray.ravel())[0, 1] > 0.999 if variant == "16-bit" else np.array_equal(got, xray)


def test_a_gray_png_with_a_transparent_level_is_still_read_by_libspng(xray):
    from cxr.data.images import _read_png_gray8
    data = _encode(Image.fromarray(xray), transparency=0)
    np.testing.assert_array_equal(_read_png_gray8(data), xray)
    np.testing.assert_array_equal(read_image(data), xray)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_a_corrupt_gray_png_is_left_to_pillow_whose_one_line_is_all_that_is_said(sample_images, capfd, damage):
    from cxr.data.images import _read_png_gray8
    data = sample_images[0].read_bytes()
    bad = data[: len(data) // 2] if damage == "truncated" else data[:60] + bytes([data[60] ^ 0xFF]) + data[61:]
    assert _read_png_gray8(bad) is None
    with pytest.raises(ImageReadError, match="corrupt PNG data"):
        read_image(bad)
    assert capfd.readouterr() == ("", "")  # no decoder library writing its own lines
