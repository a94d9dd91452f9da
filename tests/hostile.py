"""Files an attacker (or a careless modality) sends: used by the tests and by bench/load.py."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid


def xray_dicom(pixels: np.ndarray, transfer_syntax=ExplicitVRLittleEndian, **elements) -> pydicom.Dataset:
    """A 16-bit grayscale DX dataset holding ``pixels``; ``elements`` override header fields."""
    raw = pixels.astype(np.uint16)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = raw.tobytes()
    return ds


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def png16_near_limit(width: int = 6700, height: int = 6700) -> bytes:
    """A 16-bit PNG just under the pixel limit that compresses to ~100 KB."""
    img = Image.new("I;16", (width, height), 1000)
    img.paste(4000, (0, 0, width, height // 8))   # some contrast, still compressible
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def deflated_dicom_bomb(inflated_mb: int = 2048) -> bytes:
    """A small Deflated Explicit VR DICOM whose data set inflates to ``inflated_mb`` MB.

    The header announces a modest 1024x1024 image; the bomb is a private OB
    element of zeros placed before the pixel data, so only the inflated size
    gives it away.
    """
    ds = xray_dicom(np.zeros((1024, 1024)), DeflatedExplicitVRLittleEndian)
    del ds.PixelData
    whole = dicom_bytes(ds)
    meta_end = _meta_end(whole)
    body = pydicom.dcmread(io.BytesIO(whole))  # re-serialize the body as plain explicit VR LE
    plain = io.BytesIO()
    body.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    body.save_as(plain, enforce_file_format=True)
    body_bytes = plain.getvalue()[_meta_end(plain.getvalue()):]
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [whole[:meta_end], deflater.compress(body_bytes)]
    size = inflated_mb << 20
    # (0009,0010) private creator, then (0009,1000) OB holding the zeros
    out.append(deflater.compress(struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"BOMB"))
    out.append(deflater.compress(struct.pack("<HH2sHI", 0x0009, 0x1000, b"OB", 0, size)))
    zeros = bytes(1 << 20)
    for _ in range(inflated_mb):
        out.append(deflater.compress(zeros))
    out.append(deflater.flush())
    return b"".join(out)


def _meta_end(data: bytes) -> int:
    from pydicom.filereader import _read_file_meta_info, read_preamble
    stream = io.BytesIO(data)
    read_preamble(stream, False)
    _read_file_meta_info(stream)
    return stream.tell()


def dicom_text_slope(pixels: np.ndarray) -> bytes:
    """A real X-ray as DICOM whose RescaleSlope (a DS) holds text."""
    ds = xray_dicom(pixels)
    ds.add_new(0x00281053, "LO", "one point five")   # written as text, read back as DS
    ds.add_new(0x00281052, "DS", "0")
    return dicom_bytes(ds)


def dicom_huge_header(rows: int = 60000, columns: int = 60000) -> bytes:
    """A tiny file whose header announces gigapixels."""
    ds = xray_dicom(np.zeros((8, 8)))
    ds.Rows, ds.Columns = rows, columns
    return dicom_bytes(ds)


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
       b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")


def rotated_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    """``pixels`` stored as a camera would: turned, with the EXIF tag that turns them back."""
    img = Image.fromarray(pixels)
    stored = {3: img.transpose(Image.Transpose.ROTATE_180),
              6: img.transpose(Image.Transpose.ROTATE_90),
              8: img.transpose(Image.Transpose.ROTATE_270)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def rle_dicom_bomb(rows: int = 64, columns: int = 64, repeat_pairs: int = 2_000_000) -> bytes:
    """A small 16-bit RLE Lossless DICOM whose two segments are repeat runs (``0x81 x``: 128
    copies of x per 2 bytes): ``repeat_pairs`` pairs decode to 128x their size."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless
    segment = b"\x81\x00" * repeat_pairs
    frame = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13)) + segment + segment
    ds = xray_dicom(np.zeros((rows, columns), np.uint16))
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds)


def jpeg_scan_bomb(jpeg: bytes, scans: int = 10_000) -> bytes:
    """A real JPEG with ``scans`` empty 10-byte progressive scans added before its end (each costs
    the decoder a pass over the image)."""
    empty_scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00"
    return jpeg[:-2] + empty_scan * scans + b"\xff\xd9"


def mutants(data: bytes, count: int, seed: int):
    """Seeded truncations, overwritten bytes and overwritten 4-byte words of ``data``, in turn."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        d = bytearray(data)
        if i % 3 == 0:
            d = d[: int(rng.integers(1, len(d)))]
        elif i % 3 == 1:
            for _ in range(int(rng.integers(1, 8))):
                d[int(rng.integers(0, len(d)))] = int(rng.integers(0, 256))
        else:
            at = int(rng.integers(0, len(d)))
            d[at:at + 4] = bytes(rng.integers(0, 256, 4).astype(np.uint8))
        yield bytes(d)


def fuzz_seeds(thumbnails: list) -> list[tuple[str, bytes]]:
    """Real X-ray thumbnails (paths) as a PNG, a baseline and a progressive JPEG, an RGB PNG, and
    a plain, a deflated and an RLE DICOM: the files the fuzz tests mutate."""
    from pydicom.uid import RLELossless
    seeds = []
    for path in thumbnails:
        png = open(path, "rb").read()
        img = Image.open(io.BytesIO(png)).convert("L")
        pixels = np.asarray(img)
        seeds.append(("png", png))
        for name, options in (("jpeg", {}), ("progressive jpeg", {"progressive": True})):
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90, **options)
            seeds.append((name, buf.getvalue()))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "PNG")
        seeds.append(("rgb png", buf.getvalue()))
        seeds.append(("dicom", dicom_bytes(xray_dicom(pixels))))
        seeds.append(("deflated dicom", dicom_bytes(xray_dicom(pixels, DeflatedExplicitVRLittleEndian))))
        rle = xray_dicom(pixels)
        rle.compress(RLELossless)
        seeds.append(("rle dicom", dicom_bytes(rle)))
    return seeds
