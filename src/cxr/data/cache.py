"""The resize cache: every image decoded once, resized, stored as uint8.

Layout of a cache directory:
- ``images.npy``: one ``(N, size, size)`` uint8 array, one row per input file
  in name order. A batch is a read of its rows from one file: no per-image
  decode or file open while the model waits.
- ``index.csv``: ``Image Index,row`` for the images that were read. Rows of
  excluded (unreadable) images stay zero and are not indexed.

Why one array rather than TFRecord shards: random access by row gives a true
per-epoch shuffle, which shards cannot, and the file is byte-identical for the
same inputs. Rows are read and written with ``pread``/``pwrite``, not through a
memory map: a mapped page counts in the process's resident memory, so reading a
whole split at 224 px (25,596 test images: 1.3 GB) through a map would grow RSS
with the split; read by row, memory grows with the batch only and the kernel's
page cache does the caching.
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.images import (ImageReadError, decode_png_libspng, decode_png_opencv, quiet_stderr, read_image,
                             resize_image)
from cxr.errors import CxrError
from cxr.outputs import atomic_path, file_sha256
from cxr.paths import CACHE_IMAGES_FILE, CACHE_INDEX_FILE


class CacheError(CxrError):
    """The cache cannot be built or read."""


def _npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and the byte offset of the data in a ``.npy`` file."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        return (*header(f), f.tell())


class CachedImages:
    """The cache's ``(N, size, size)`` uint8 array, read from its file by row when indexed
    (``images[i]``, ``images[rows]`` with an int array of any shape): a NumPy array of
    what was asked for, nothing more held in memory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            shape, fortran, dtype, self._offset = _npy_header(self.path)
        except ValueError as e:
            raise CacheError(f"{self.path}: not a .npy array ({e}); rerun resize") from None
        if dtype != np.uint8 or len(shape) != 3 or shape[1] != shape[2] or fortran:
            raise CacheError(f"{self.path}: expected an (N, size, size) uint8 array, got {shape} {dtype}; rerun resize")
        self.shape, self.dtype = tuple(shape), np.dtype(np.uint8)
        self._row_bytes = shape[1] * shape[2]
        self._fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        rows = np.asarray(index)
        if rows.dtype.kind not in "iu":
            raise TypeError(f"cache rows are indexed by integers, got {rows.dtype}")
        flat = rows.reshape(-1).astype(np.int64)
        n = self.shape[0]
        if flat.size and (flat.min() < -n or flat.max() >= n):
            raise IndexError(f"{self.path}: row out of range for {n} images")
        flat = np.where(flat < 0, flat + n, flat)
        out = np.empty((flat.size, *self.shape[1:]), np.uint8)
        for i, row in enumerate(flat.tolist()):
            got = os.preadv(self._fd, [out[i]], self._offset + row * self._row_bytes)
            if got != self._row_bytes:
                raise CacheError(f"{self.path}: truncated at row {row}; rerun resize")
        return out.reshape(rows.shape + self.shape[1:])


def load_and_resize(path: str, size: int, png_decoder=decode_png_libspng) -> tuple[np.ndarray | None, str | None]:
    """``(pixels, None)`` or ``(None, reason)`` for one file; never raises for bad images."""
    try:
        return resize_image(read_image(path, png_decoder), size), None
    except ImageReadError as e:
        return None, str(e)


def _resize_rows(job: tuple[str, int, int, list[tuple[int, str]]]) -> tuple[int, dict[int, str]]:
    """Decode, resize and write one chunk of ``(row, path)`` straight into the output file at
    those rows; returns how many were done and the reasons of the unreadable ones.

    PNGs are decoded by OpenCV (the fastest decoder here, pixel-identical to what predict and
    serve decode with libspng), its libpng messages on stderr silenced: the reasons returned
    say what is wrong with a file, in one line.
    """
    out_path, offset, size, chunk = job
    bad = {}
    fd = os.open(out_path, os.O_WRONLY)
    try:
        with quiet_stderr():
            for row, path in chunk:
                pixels, reason = load_and_resize(path, size, decode_png_opencv)
                if reason is None:
                    os.pwrite(fd, np.ascontiguousarray(pixels).data, offset + row * size * size)
                else:
                    bad[row] = reason
    finally:
        os.close(fd)
    return len(chunk), bad


CHUNK_IMAGES = 32   # images per task handed to a worker: big enough to make handing out work cheap


def build_cache(paths: Sequence[str | os.PathLike], size: int, workers: int, out_dir: str | os.PathLike,
                max_bad_fraction: float = 0.0, progress: bool = True, pool=None,
                chunk_images: int = CHUNK_IMAGES) -> dict:
    """Decode and resize ``paths`` in parallel into a cache at ``out_dir``.

    Workers write each image at its row of the output file; the parent only hands out
    chunks of rows, so its memory does not grow with the dataset. ``pool`` is a started
    ``multiprocessing`` pool to use instead of starting ``workers`` processes;
    ``chunk_images`` the rows per task (bench/run.py measures the choice).
    Returns a report: counts, and each excluded image with its reason. Raises
    ``CacheError`` (leaving any previous cache in place) when more than
    ``max_bad_fraction`` of the images are unreadable.
    """
    from tqdm import tqdm

    paths = sorted((str(p) for p in paths), key=lambda p: Path(p).name)
    if not paths:
        raise CacheError("resize: no images to cache")
    names = [Path(p).name for p in paths]
    bad: dict[int, str] = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        images = tmp.resolve() / CACHE_IMAGES_FILE
        # A zero-filled (sparse) array of the final shape: rows of unreadable images stay zero.
        np.lib.format.open_memmap(images, mode="w+", dtype=np.uint8, shape=(len(paths), size, size)).flush()
        offset = _npy_header(images)[3]
        rows = list(enumerate(paths))
        jobs = [(str(images), offset, size, rows[start:start + chunk_images])
                for start in range(0, len(rows), chunk_images)]
        bar = tqdm(total=len(paths), desc="resize", unit="img", disable=not progress)
        # forkserver: workers fork from a clean process, safe even if the caller
        # has TensorFlow's threads running.
        own = pool is None and workers > 1
        if own:
            pool = get_context("forkserver").Pool(workers)
        try:
            results = pool.imap_unordered(_resize_rows, jobs) if pool else map(_resize_rows, jobs)
            for done, failed in results:
                bad.update(failed)
                bar.update(done)
        finally:
            if own:
                pool.terminate()
            bar.close()
        fraction = len(bad) / len(paths)
        if fraction > max_bad_fraction:
            first = min(bad)
            raise CacheError(
                f"resize: {len(bad)} of {len(paths)} images unreadable ({fraction:.1%}), over "
                f"resize.max_bad_fraction {max_bad_fraction}; first: {names[first]}: {bad[first]}")
        index = pd.DataFrame({"Image Index": names, "row": np.arange(len(names))})
        index = index[~index.index.isin(list(bad))]
        index.to_csv(tmp / CACHE_INDEX_FILE, index=False, lineterminator="\n")
    excluded = {names[row]: reason for row, reason in bad.items()}
    return {"images": len(paths), "cached": len(paths) - len(bad), "excluded": len(bad),
            "excluded_images": dict(sorted(excluded.items())), "size": size}


def cache_sha256(cache_dir: str | os.PathLike) -> str:
    """One sha256 over the cache's index and pixels (5.6 GB at full scale and 224 px: read it once)."""
    return file_sha256([Path(cache_dir) / CACHE_INDEX_FILE, Path(cache_dir) / CACHE_IMAGES_FILE])


def load_cache(cache_dir: str | os.PathLike) -> tuple[CachedImages, pd.DataFrame]:
    """The ``(N, size, size)`` uint8 pixels (read by row) and the ``Image Index -> row`` index."""
    cache_dir = Path(cache_dir)
    try:
        pixels = CachedImages(cache_dir / CACHE_IMAGES_FILE)
        index = pd.read_csv(cache_dir / CACHE_INDEX_FILE)
    except FileNotFoundError as e:
        raise CacheError(f"{e.filename}: missing; run the resize stage (dvc repro resize)") from None
    return pixels, index
