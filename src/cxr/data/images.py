"""The one image reader: a path or bytes -> 2-D uint8 grayscale array.

Used by resize, predict and serve alike, so training and serving see the same
pixels. Accepts PNG, JPEG and DICOM only (by content, not by name). Before any
pixel is decoded it checks the size the header announces against a budget, so
no upload can make it allocate more than about ``MAX_DECODED_BYTES`` plus one
8-bit copy. Every failure is an ``ImageReadError`` with a one-line reason.
"""
from __future__ import annotations

from cxr.errors import CxrError, first_line

import contextlib
import io
import math
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Callable

import numpy as np
import pyspng
from PIL import Image, ImageOps, UnidentifiedImageError

# Full-size NIH PNGs are 1024x1024 and the original DICOMs about 3000x3000;
# anything beyond ~6700x6700 is refused before its pixels are decoded.
MAX_PIXELS = 45_000_000
# One frame at the pixel limit at 16 bits: the most decoded data any input may announce.
MAX_DECODED_BYTES = MAX_PIXELS * 2
# A file larger than any image the budget admits, even stored uncompressed, is not read.
MAX_FILE_BYTES = MAX_DECODED_BYTES + (16 << 20)
FORMATS = ("PNG", "JPEG")            # Pillow formats; DICOM is read by pydicom
_DICOM_MAGIC = b"DICM"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
_RLE = "1.2.840.10008.1.2.5"          # RLE Lossless
_JPEG_SOI, _JPEG_SOS = b"\xff\xd8", b"\xff\xda"
# A progressive JPEG has about 10 scans (Pillow's and libjpeg's default script); each extra scan,
# even an empty one, costs a pass over the whole image, so thousands make a CPU bomb.
MAX_JPEG_SCANS = 64
_CHUNK_PIXELS = 1 << 20               # rows converted at a time: bounds float temporaries


class ImageReadError(CxrError):
    """An image that cannot be used; ``str(e)`` is the one-line reason."""


class UnsupportedImageError(ImageReadError):
    """Content that is not a PNG, JPEG or DICOM (a server answers 415, not 422)."""


def _stretch_to_uint8(a: np.ndarray, values: Callable[[np.ndarray], np.ndarray] = np.asarray) -> np.ndarray:
    """``values(a)`` stretched to 0..255 by its own min..max, a block of rows at a time.

    The bit depth actually used (12, 14 or 16) is not recorded in a PNG, so
    the image's own range is the only scale that works for all of them.
    ``values`` (e.g. a DICOM's rescale and window) must work element-wise: it
    is applied to blocks, so no float copy of the whole image is ever made.
    """
    rows = max(1, _CHUNK_PIXELS // max(1, math.prod(a.shape[1:])))
    blocks = range(0, a.shape[0], rows)
    lo, hi = math.inf, -math.inf
    for r in blocks:
        v = values(a[r:r + rows])
        lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ImageReadError("pixel values are not finite numbers")
    out = np.zeros(a.shape[:2], dtype=np.uint8)
    if hi <= lo:
        return out
    scale = 255.0 / (hi - lo)
    for r in blocks:
        out[r:r + rows] = np.round((np.asarray(values(a[r:r + rows]), dtype=np.float64) - lo) * scale)
    return out


def _read_pillow(stream) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(stream, formats=FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageReadError(f"image is larger than {MAX_PIXELS} pixels (decompression bomb?)") from None
        except UnidentifiedImageError:
            raise UnsupportedImageError("not a PNG, JPEG or DICOM file") from None
        with img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageReadError(f"image is {w}x{h}, over the {MAX_PIXELS}-pixel limit (decompression bomb?)")
            if w < 1 or h < 1:
                raise ImageReadError(f"image is {w}x{h}")
            try:
                img.load()
                # As every viewer shows it: a phone or scanner JPEG may store the pixels rotated.
                ImageOps.exif_transpose(img, in_place=True)
            except (OSError, SyntaxError, ValueError, TypeError, struct.error) as e:
                raise ImageReadError(f"corrupt {img.format or 'image'} data ({first_line(e)})") from None
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                return _stretch_to_uint8(np.asarray(img))
            if img.mode != "L":
                # RGBA/LA/P with transparency: the colour channels carry the X-ray.
                img = img.convert("RGB").convert("L") if img.mode != "1" else img.convert("L")
            return np.array(img, dtype=np.uint8)


def decode_png_libspng(data: bytes) -> np.ndarray | None:
    """libspng's decode; ``None`` when it fails."""
    try:
        return pyspng.load(data)
    except RuntimeError:
        return None


def decode_png_opencv(data: bytes) -> np.ndarray | None:
    """libpng's decode through OpenCV: 6.6 ms against libspng's 8.0 ms for a 1024 px NIH PNG
    here, pixel-identical; ``None`` when it fails. libpng prints its own lines on stderr for a
    corrupt file, so it is for processes whose stderr is silenced (``quiet_stderr``), not for
    ``cxr predict`` or ``serve``."""
    import cv2
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 pointed at /dev/null meanwhile (C libraries write there directly).
    For single-threaded worker processes: it silences the whole process."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _read_png_gray8(data: bytes, decode: Callable[[bytes], np.ndarray | None] = decode_png_libspng
                    ) -> np.ndarray | None:
    """An 8-bit grayscale PNG (what NIH ships) decoded by ``decode``, faster than Pillow and
    pixel-identical; ``None`` for anything else, which Pillow reads (and words any error).

    The size is checked from the IHDR chunk before decoding; files that may carry an
    EXIF orientation (an ``eXIf`` chunk) are left to Pillow, which applies it.
    """
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or b"eXIf" in data:
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if (depth, colour) != (8, 0) or not 0 < width * height <= MAX_PIXELS:
        return None
    pixels = decode(data)                # None when corrupt or truncated: Pillow says how
    return pixels if pixels is not None and pixels.dtype == np.uint8 and pixels.shape == (height, width) else None


def _header_number(ds, keyword: str, default: float, whole: bool = False) -> float:
    """A numeric DICOM element, checked before it is used in any arithmetic."""
    value = ds.get(keyword, default)
    expected = "a whole number >= 0" if whole else "a finite number"
    try:
        number = int(value) if whole else float(value)
    except (TypeError, ValueError):
        raise ImageReadError(f"DICOM {keyword} is {str(value)[:40]!r}, expected {expected}") from None
    if (whole and number < 0) or not math.isfinite(number):
        raise ImageReadError(f"DICOM {keyword} is {number}, expected {expected}")
    return number


def _check_inflated_size(deflated: bytes) -> None:
    """Count the inflated size, 1 MB at a time, stopping past the budget: a small
    deflated file may expand to gigabytes (pydicom would inflate it whole)."""
    inflater, total, pending = zlib.decompressobj(-zlib.MAX_WBITS), 0, deflated
    try:
        while pending and total <= MAX_FILE_BYTES:
            total += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
        if not pending:  # flush() would inflate all that is left: only once the input is used up
            total += len(inflater.flush())
    except zlib.error as e:
        raise ImageReadError(f"corrupt deflated DICOM data ({first_line(e)})") from None
    if total > MAX_FILE_BYTES:
        raise ImageReadError(f"deflated DICOM inflates past {MAX_FILE_BYTES >> 20} MB (decompression bomb?)")


def _rle_segment_length(segment: bytes, limit: int) -> int:
    """The bytes a PackBits segment decodes to, counted without decoding, stopping past ``limit``."""
    i, n, out = 0, len(segment), 0
    while i < n and out <= limit:
        header = segment[i]
        if header < 128:       # copy the next header + 1 bytes (those there are: a segment may end in padding)
            out, i = out + min(header + 1, n - i - 1), i + header + 2
        elif header > 128:     # repeat the next byte 257 - header times
            out, i = out + 257 - header, i + 2
        else:                  # 128: no operation
            i += 1
    return out


def _check_rle(pixel_data: bytes, pixels: int) -> None:
    """Each RLE segment (one per byte of a sample) decodes to exactly rows x columns bytes; one
    that would decode to more is refused before pydicom builds it (19 MB of repeat runs decode
    to gigabytes)."""
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(pixel_data, number_of_frames=1), b"")
    if len(frame) < 64:
        raise ImageReadError("DICOM RLE frame is shorter than its 64-byte header")
    count, *offsets = struct.unpack("<16L", frame[:64])
    if not 1 <= count <= 15:
        raise ImageReadError(f"DICOM RLE frame has {count} segments, expected 1 to 15")
    ends = offsets[1:count] + [len(frame)]
    for start, end in zip(offsets[:count], ends):
        if not 64 <= start <= end <= len(frame):
            raise ImageReadError("DICOM RLE segment offsets are out of order or outside the frame")
        if _rle_segment_length(frame[start:end], pixels) > pixels:
            raise ImageReadError(f"DICOM RLE segment decodes to more than the header's {pixels} pixels "
                                 "(decompression bomb?)")


def _read_dicom(data: bytes) -> np.ndarray:
    import pydicom  # only DICOM inputs pay for the import
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    stream = io.BytesIO(data)
    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
    except Exception as e:  # pydicom raises many types for a broken file
        raise ImageReadError(f"unreadable DICOM header ({first_line(e)})") from None
    if str(meta.get("TransferSyntaxUID", "")) == _DEFLATED:
        _check_inflated_size(data[stream.tell():])
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:
        raise ImageReadError(f"unreadable DICOM ({first_line(e)})") from None
    if "PixelData" not in ds:
        raise ImageReadError("DICOM has no pixel data")
    rows, cols, frames, samples, bits = (_header_number(ds, k, default, whole=True) for k, default in (
        ("Rows", 0), ("Columns", 0), ("NumberOfFrames", 1), ("SamplesPerPixel", 1), ("BitsAllocated", 16)))
    if rows * cols > MAX_PIXELS:
        raise ImageReadError(f"image is {cols}x{rows}, over the {MAX_PIXELS}-pixel limit (decompression bomb?)")
    decoded = rows * cols * frames * samples * -(-bits // 8)
    if decoded > MAX_DECODED_BYTES:
        raise ImageReadError(f"DICOM announces {decoded >> 20} MB of pixels ({frames} frame(s) of {cols}x{rows}x"
                             f"{samples} at {bits} bits), over the {MAX_DECODED_BYTES >> 20} MB limit")
    if frames != 1 or samples not in (1, 3):
        raise ImageReadError(f"DICOM has {frames} frame(s) of {samples} sample(s), expected one "
                             "grayscale or RGB frame")
    _header_number(ds, "RescaleIntercept", 0.0)   # checked here; apply_modality_lut applies it with the slope
    if _header_number(ds, "RescaleSlope", 1.0) == 0:
        raise ImageReadError("DICOM RescaleSlope is 0, expected a non-zero number")
    if str(meta.get("TransferSyntaxUID", "")) == _RLE:
        _check_rle(ds.PixelData, rows * cols)
    try:
        a = ds.pixel_array
    except Exception as e:
        raise ImageReadError(f"DICOM pixel data cannot be decoded ({first_line(e)})") from None
    if a.shape[:2] != (rows, cols) or a.ndim != (2 if samples == 1 else 3):
        raise ImageReadError(f"DICOM pixel array has shape {a.shape}, expected {rows}x{cols}x{samples}")

    def values(block: np.ndarray) -> np.ndarray:
        if samples == 3:
            block = block[..., :3].mean(axis=-1)
        block = apply_modality_lut(block, ds)        # rescale slope / intercept
        return apply_voi_lut(block, ds)               # window centre / width, when present

    try:
        a = _stretch_to_uint8(a, values)
    except ImageReadError:
        raise
    except Exception as e:  # text in a window or LUT element, a LUT of the wrong shape, ...
        raise ImageReadError(f"DICOM rescale/window values cannot be applied ({first_line(e)})") from None
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        a = 255 - a                          # MONOCHROME1: high values are dark
    return a


def read_image(source: str | os.PathLike | bytes,
               png_decoder: Callable[[bytes], np.ndarray | None] = decode_png_libspng) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM (path or bytes) to a 2-D uint8 grayscale array;
    ``png_decoder`` decodes 8-bit grayscale PNGs (the others go to Pillow)."""
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else _read_file(source)
    if not data:
        raise ImageReadError("empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageReadError(f"data is {len(data) >> 20} MB, over the {MAX_FILE_BYTES >> 20} MB limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # pydicom's notes on odd values: the error says what counts
            return _decode(data, png_decoder)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError("decoding it needs more memory than this machine has") from None
    except Exception as e:   # any decoder's own error for a broken file (a truncated header, an unknown VR)
        raise ImageReadError(f"corrupt image data ({type(e).__name__}: {first_line(e)})") from None


def _decode(data: bytes, png_decoder: Callable[[bytes], np.ndarray | None]) -> np.ndarray:
    if data[128:132] == _DICOM_MAGIC:
        return _read_dicom(data)
    if data[:2] == _JPEG_SOI and (scans := data.count(_JPEG_SOS)) > MAX_JPEG_SCANS:
        raise ImageReadError(f"JPEG has {scans} scans, over the {MAX_JPEG_SCANS} a real image uses "
                             "(a decode-time bomb?)")
    fast = _read_png_gray8(data, png_decoder)
    return fast if fast is not None else _read_pillow(io.BytesIO(data))


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _read_file(path: str | os.PathLike) -> bytes:
    """A regular file's bytes, its size checked first; anything else (a FIFO, a device such as
    /dev/zero behind a symlink) is refused before a byte is read: it may never end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # a FIFO must not block the open itself
    except OSError as e:
        raise ImageReadError(f"cannot read file ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "of an unknown kind")
            raise ImageReadError(f"not a regular file ({kind})")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageReadError(f"file is {info.st_size >> 20} MB, over the {MAX_FILE_BYTES >> 20} MB limit")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ImageReadError(f"cannot read file ({e.strerror or e})") from None
    finally:
        os.close(fd)


def resize_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """Square ``size`` x ``size`` uint8 copy, antialiased: a box reduction by the largest whole
    factor, then Lanczos the rest of the way."""
    img = Image.fromarray(pixels)
    if img.size == (size, size):
        return np.array(pixels, dtype=np.uint8)
    # reducing_gap 1: 1024 -> 224 px in 1.5 ms instead of 6.9 ms (full Lanczos), within
    # 0.3 grey levels of it on average (bench/run.py reports the split).
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=1.0), dtype=np.uint8)
