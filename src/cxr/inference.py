"""A trained model, loaded and run: all that evaluate, export, predict and serve need.

Kept apart from ``cxr.train`` so that using a model imports no training code.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402

from cxr.errors import CxrError, first_line  # noqa: E402



class ModelFileError(CxrError):
    """A model file that is missing, truncated or not a Keras model."""


def load_model(path: str | os.PathLike) -> keras.Model:
    """The saved model; a truncated or foreign file is one line (Keras calls it 'File not found')."""
    path = Path(path)
    restore = "restore it with `dvc checkout` or `dvc repro`"
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ModelFileError(f"{path}: not a complete .keras file ({e}); {restore}") from None
    if bad is not None:
        raise ModelFileError(f"{path}: corrupt .keras file (bad CRC in {bad}); {restore}")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a file it cannot rebuild a model from
        raise ModelFileError(f"{path}: Keras cannot load it ({first_line(e)}); {restore}") from None


PREDICT_CHUNK = 1024  # images converted to float32 at a time


def predict(model: keras.Model, images, batch_size: int = 64) -> np.ndarray:
    """Probabilities for ``(n, s, s, 1)`` images in 0..255: an array, or a split read lazily
    from the cache (``Dataset.images``). Converted to float one chunk at a time, so memory
    does not grow with the split; chunks are whole batches, so the outputs are those of
    one ``Model.predict`` over all images."""
    chunk = max(PREDICT_CHUNK // batch_size, 1) * batch_size
    parts = [model.predict(np.asarray(images[start:start + chunk], dtype=np.float32), batch_size=batch_size,
                           verbose=0) for start in range(0, len(images), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)


def compiled(model: keras.Model):
    """The model as one compiled graph call, for a few images at a time. ``Model.predict``
    builds a data pipeline on every call: 113 ms for one 128-px image on MobileNet here,
    against 14 ms (same outputs)."""
    import tensorflow as tf

    def call(images):
        return model({model.inputs[0].name: images}, training=False)

    graph = tf.function(call, reduce_retracing=True, autograph=False)
    return lambda images: graph(tf.convert_to_tensor(images, tf.float32)).numpy()
