"""Bottleneck features: a frozen backbone's output for every cached image, computed once.

While a variant's backbone is frozen (``freeze_epochs``), each epoch would run
the whole backbone forward on every image to train a head of a few thousand
weights. The features stage runs it once per (family, weights, image size,
cache, compute settings) and stores the pooled features (``features.npy``,
float32, one row per cache row) with that key (``key.json``); train then fits
the head on them for the frozen epochs and runs the full network only once
the backbone unfreezes. They are the backbone's inference-mode output on
the cached images, so the frozen phase trains without augmentation
(``train.feature_cache: false`` keeps augmenting, on the full network).

The output persists across runs: when only a variant's training keys change,
the stage finds the same key and keeps the file (DVC then sees an unchanged
output, so nothing downstream reruns for it).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cxr.errors import CxrError
from cxr.outputs import atomic_path
from cxr.params import ComputeParams, ModelParams, VariantParams

FEATURES_FILE, KEY_FILE = "features.npy", "key.json"
_BATCH = 64   # images per forward pass: memory stays bounded at any cache size


class FeatureCacheError(CxrError):
    """A feature cache that does not match what it is used for."""


def wanted(mp: VariantParams, enabled: bool) -> str | None:
    """Why a variant has no feature cache (None: it has one)."""
    from cxr.models import MODELS
    if not enabled:
        return "train.feature_cache is false"
    if not isinstance(mp, ModelParams) or not MODELS[mp.family].backbone:
        return f"family {mp.family} has no backbone to freeze"
    if not mp.freeze_epochs:
        return "freeze_epochs is 0 (the backbone trains from the first epoch)"
    return None


def feature_key(mp: ModelParams, size: int, cache_sha256: str, compute: ComputeParams, seed: int) -> dict:
    """What the features depend on: the backbone (family, weights; a random one is drawn from
    ``seed``, as train draws it), the pixels (the cache's digest) and how TensorFlow computes."""
    key = {"family": mp.family, "weights": mp.weights, "size": size, "cache_sha256": cache_sha256,
           "compute": asdict(compute)}
    return key if mp.weights is not None else {**key, "seed": seed}


def read_key(directory: str | os.PathLike) -> dict | None:
    path = Path(directory) / KEY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _head_layers(model) -> list:
    """The layers of a backbone classifier after its ``backbone`` layer."""
    names = [layer.name for layer in model.layers]
    return model.layers[names.index("backbone") + 1:]


def backbone_model(model):
    """The part of a backbone classifier that a frozen phase does not train: image -> pooled features
    (the input of the head)."""
    import keras
    return keras.Model(model.inputs[0], _head_layers(model)[0].input, name=f"{model.name}_features")


def head_model(model, dims: int):
    """The head of a backbone classifier on a features input, sharing the model's layers (training it
    trains them)."""
    import keras
    inputs = keras.Input((dims,), name="features")
    x = inputs
    for layer in _head_layers(model):
        x = layer(x)
    return keras.Model(inputs, x, name=f"{model.name}_head")


def compute_features(model, pixels: np.ndarray, out: str | os.PathLike) -> dict:
    """Write ``backbone_model(model)``'s output for every row of ``pixels`` to ``out`` (a ``.npy`` file,
    written to a temp path and renamed), a batch at a time; returns its shape and timing."""
    features = backbone_model(model)
    dims = int(features.outputs[0].shape[-1])
    started = time.perf_counter()
    with atomic_path(out) as tmp:
        stored = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(pixels), dims))
        for start in range(0, len(pixels), _BATCH):
            batch = np.asarray(pixels[np.arange(start, min(start + _BATCH, len(pixels)))], dtype=np.float32)[..., None]
            stored[start:start + len(batch)] = features(batch, training=False)
        stored.flush()
        del stored
    seconds = time.perf_counter() - started
    return {"images": int(len(pixels)), "dims": dims, "seconds": round(seconds, 2),
            "ms_per_image": round(1000 * seconds / max(len(pixels), 1), 3)}


def load_features(directory: str | os.PathLike, key: dict) -> np.ndarray:
    """The stored features (memory-mapped) for ``key``; an error when they are missing or were
    computed for something else."""
    stored = read_key(directory)
    if stored is None or not stored.get("used") or not (Path(directory) / FEATURES_FILE).is_file():
        raise FeatureCacheError(f"{directory}/{FEATURES_FILE}: missing; run the features stage (dvc repro)")
    if stored["key"] != key:
        differs = sorted(k for k in key if stored["key"].get(k) != key[k])
        raise FeatureCacheError(f"{directory}/{KEY_FILE}: features computed for other {', '.join(differs)}; "
                                "rerun the features stage (dvc repro)")
    return np.load(Path(directory) / FEATURES_FILE, mmap_mode="r")
