"""The resize cache: every image decoded once, resized, stored as uint8.

Layout of a cache directory:
- ``images.npy``: one ``(N, size, size)`` uint8 array, one row per input file
  in name order. Training memory-maps it, so a batch is a fancy-index into
  one file: no per-image decode or file open while the model waits.
- ``index.csv``: ``Image Index,row`` for the images that were read. Rows of
  excluded (unreadable) images stay zero and are not indexed.

Why one array rather than TFRecord shards: the whole default cache is a few
MB and even the full dataset at 224 px (5.6 GB) fits the page cache of a
24 GB machine; random access by row gives a true per-epoch shuffle, which
shards cannot, and the file is byte-identical for the same inputs.
"""
from __future__ import annotations

from cxr.errors import CxrError

import os
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.images import ImageReadError, read_image, resize_image
from cxr.outputs import atomic_path
from cxr.paths import CACHE_IMAGES_FILE, CACHE_INDEX_FILE



class CacheError(CxrError):
    """The cache cannot be built or read."""


def load_and_resize(path: str, size: int) -> tuple[np.ndarray | None, str | None]:
    """``(pixels, None)`` or ``(None, reason)`` for one file; never raises for bad images."""
    try:
        return resize_image(read_image(path), size), None
    except ImageReadError as e:
        return None, str(e)


def _load_job(job: tuple[str, int]):
    return load_and_resize(*job)


def build_cache(paths: Sequence[str | os.PathLike], size: int, workers: int, out_dir: str | os.PathLike,
                max_bad_fraction: float = 0.0, progress: bool = True) -> dict:
    """Decode and resize ``paths`` in parallel into a cache at ``out_dir``.

    Returns a report: counts, and each excluded image with its reason. Raises
    ``CacheError`` (leaving any previous cache in place) when more than
    ``max_bad_fraction`` of the images are unreadable.
    """
    from tqdm import tqdm

    paths = sorted((str(p) for p in paths), key=lambda p: Path(p).name)
    if not paths:
        raise CacheError("resize: no images to cache")
    names = [Path(p).name for p in paths]
    bad: dict[str, str] = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        pixels = np.lib.format.open_memmap(tmp / CACHE_IMAGES_FILE, mode="w+", dtype=np.uint8,
                                           shape=(len(paths), size, size))
        jobs = [(p, size) for p in paths]
        chunk = max(1, min(64, len(jobs) // (workers * 8) or 1))
        bar = tqdm(total=len(jobs), desc="resize", unit="img", disable=not progress)
        # forkserver: workers fork from a clean process, safe even if the caller
        # has TensorFlow's threads running.
        pool = get_context("forkserver").Pool(workers) if workers > 1 else None
        try:
            # imap keeps input order, so row i is always paths[i]: deterministic bytes.
            results = pool.imap(_load_job, jobs, chunksize=chunk) if pool else map(_load_job, jobs)
            for i, (arr, reason) in enumerate(results):
                if reason is None:
                    pixels[i] = arr
                else:
                    bad[names[i]] = reason
                bar.update()
        finally:
            if pool:
                pool.terminate()
            bar.close()
        pixels.flush()
        del pixels
        fraction = len(bad) / len(paths)
        if fraction > max_bad_fraction:
            first = next(iter(bad.items()))
            raise CacheError(
                f"resize: {len(bad)} of {len(paths)} images unreadable ({fraction:.1%}), over "
                f"resize.max_bad_fraction {max_bad_fraction}; first: {first[0]}: {first[1]}")
        index = pd.DataFrame({"Image Index": names, "row": np.arange(len(names))})
        index = index[~index["Image Index"].isin(bad)]
        index.to_csv(tmp / CACHE_INDEX_FILE, index=False, lineterminator="\n")
    return {"images": len(paths), "cached": len(paths) - len(bad), "excluded": len(bad),
            "excluded_images": dict(sorted(bad.items())), "size": size}


def load_cache(cache_dir: str | os.PathLike) -> tuple[np.ndarray, pd.DataFrame]:
    """Memory-mapped ``(N, size, size)`` uint8 pixels and the ``Image Index -> row`` index."""
    cache_dir = Path(cache_dir)
    try:
        pixels = np.load(cache_dir / CACHE_IMAGES_FILE, mmap_mode="r")
        index = pd.read_csv(cache_dir / CACHE_INDEX_FILE)
    except FileNotFoundError as e:
        raise CacheError(f"{e.filename}: missing; run the resize stage (dvc repro resize)") from None
    return pixels, index
