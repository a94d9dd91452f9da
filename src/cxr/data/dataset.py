"""The one dataset abstraction: cached pixels + labels + split, joined by image name.

Train, evaluate and export all read their images through ``load_dataset``,
so they agree on which image is in which split and what its targets are.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr.data.cache import load_cache
from cxr.data.split import SPLITS
from cxr.errors import CxrError


class DatasetError(CxrError):
    """Pipeline outputs that do not fit together."""


@dataclass(frozen=True)
class Subset:
    """One split: rows into the cache, targets, and who the images belong to."""
    names: np.ndarray      # image file names
    rows: np.ndarray       # row of each image in the cache's pixel array
    y: np.ndarray          # (n, targets) float32 0/1
    patients: np.ndarray   # patient ID per image (for patient-level bootstrap)

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class SplitImages:
    """A split's images, read from the memory-mapped cache only when indexed: ``images[a:b]``,
    ``images[[i, j]]`` and ``images[i]`` give uint8 arrays ``(..., size, size, 1)``. Nothing holds
    the whole split, so evaluation and export run in memory bounded by what they index."""
    pixels: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.pixels.shape[1:], 1)

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.pixels[self.rows[index]])[..., None]


@dataclass(frozen=True)
class Dataset:
    pixels: np.ndarray     # (N, size, size) uint8, memory-mapped
    targets: tuple[str, ...]
    splits: dict[str, Subset]

    def images(self, split: str) -> SplitImages:
        """A split's pixels as ``(n, size, size, 1)`` uint8, read from the cache as indexed."""
        return SplitImages(self.pixels, self.splits[split].rows)


def load_dataset(cache_dir: str | os.PathLike, labels_path: str | os.PathLike,
                 splits_path: str | os.PathLike, targets: Sequence[str]) -> Dataset:
    """Join the resize cache, the label table and the split table.

    Images excluded by resize (unreadable) drop out here; a split that ends
    up empty, or a target column that is missing, is a ``DatasetError``.
    """
    pixels, index = load_cache(cache_dir)
    labels = pd.read_csv(labels_path)
    splits = pd.read_csv(splits_path)
    missing = [t for t in targets if t not in labels.columns]
    if missing:
        raise DatasetError(f"{labels_path}: no target column {missing[0]!r}; rerun relabel")
    table = labels.merge(splits[["Image Index", "split"]], on="Image Index", how="inner", validate="one_to_one")
    table = table.merge(index, on="Image Index", how="inner", validate="one_to_one")
    subsets = {}
    for name in SPLITS:
        part = table[table["split"] == name].sort_values("Image Index")
        if part.empty:
            raise DatasetError(f"{splits_path}: split '{name}' has no images with a cached picture")
        subsets[name] = Subset(
            names=part["Image Index"].to_numpy(),
            rows=part["row"].to_numpy(dtype=np.int64),
            y=part[list(targets)].to_numpy(dtype=np.float32),
            patients=part["Patient ID"].to_numpy(),
        )
    return Dataset(pixels=pixels, targets=tuple(targets), splits=subsets)
