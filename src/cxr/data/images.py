"""The one image reader: a path or bytes -> 2-D uint8 grayscale array.

Used by resize, predict and serve alike, so training and serving see the same
pixels. Accepts PNG and JPEG in any Pillow mode (8/16-bit, L, RGB, RGBA,
palette, CMYK) and DICOM. Anything else raises ``ImageReadError`` with a
one-line reason.
"""
from __future__ import annotations

from cxr.errors import CxrError

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Full-size NIH PNGs are 1024x1024 and the original DICOMs about 3000x3000;
# anything beyond ~6700x6700 is refused before its pixels are decoded.
MAX_PIXELS = 45_000_000
_DICOM_MAGIC = b"DICM"


class ImageReadError(CxrError):
    """An image that cannot be used; ``str(e)`` is the one-line reason."""


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Deeper-than-8-bit data stretched to 0..255 by its own range.

    The bit depth actually used (12, 14 or 16) is not recorded in a PNG, so
    the image's own min..max is the only scale that works for all of them.
    """
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _read_pillow(stream) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(stream)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageReadError(f"image is larger than {MAX_PIXELS} pixels (decompression bomb?)") from None
        except UnidentifiedImageError:
            raise ImageReadError("not an image (unrecognized format)") from None
        with img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageReadError(f"image is {w}x{h}, over the {MAX_PIXELS}-pixel limit (decompression bomb?)")
            if w < 1 or h < 1:
                raise ImageReadError(f"image is {w}x{h}")
            try:
                img.load()
            except (OSError, SyntaxError, ValueError) as e:
                raise ImageReadError(f"corrupt {img.format or 'image'} data ({e})") from None
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                return _to_uint8(np.asarray(img))
            if img.mode != "L":
                # RGBA/LA/P with transparency: the colour channels carry the X-ray.
                img = img.convert("RGB").convert("L") if img.mode != "1" else img.convert("L")
            return np.array(img, dtype=np.uint8)


def _read_dicom(data: bytes) -> np.ndarray:
    import pydicom  # only DICOM inputs pay for the import
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:  # pydicom raises many types for a broken file
        raise ImageReadError(f"unreadable DICOM ({e})") from None
    if "PixelData" not in ds:
        raise ImageReadError("DICOM has no pixel data")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > MAX_PIXELS:
        raise ImageReadError(f"image is {cols}x{rows}, over the {MAX_PIXELS}-pixel limit")
    try:
        a = ds.pixel_array
    except Exception as e:
        raise ImageReadError(f"DICOM pixel data cannot be decoded ({e})") from None
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].mean(axis=-1)
    elif a.ndim != 2:
        raise ImageReadError(f"DICOM pixel array has shape {a.shape}, expected a single 2-D frame")
    a = apply_modality_lut(a, ds)           # rescale slope / intercept
    a = apply_voi_lut(a, ds)                 # window centre / width, when present
    a = _to_uint8(a)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        a = 255 - a                          # MONOCHROME1: high values are dark
    return a


def read_image(source: str | os.PathLike | bytes) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM (path or bytes) to a 2-D uint8 grayscale array."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise ImageReadError(f"cannot read file ({e.strerror or e})") from None
    if not data:
        raise ImageReadError("empty file (0 bytes)")
    if data[128:132] == _DICOM_MAGIC:
        return _read_dicom(data)
    return _read_pillow(io.BytesIO(data))


def resize_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """Square ``size`` x ``size`` uint8 copy, antialiased (Lanczos)."""
    img = Image.fromarray(pixels)
    if img.size == (size, size):
        return np.array(pixels, dtype=np.uint8)
    # reducing_gap: box-reduce big images first, then Lanczos; same look, far faster.
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0), dtype=np.uint8)
