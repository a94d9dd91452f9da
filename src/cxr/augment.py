"""Training augmentation: one random affine transform per image, applied to a batch as one op.

The transforms follow the distributions of the Keras layers they replace
(``RandomRotation``, ``RandomTranslation``, ``RandomZoom``, ``RandomShear``,
``RandomFlip``, in that order, with the same ranges, centres and signs) but
are composed into one matrix per image, so each batch is resampled once (one
bilinear interpolation instead of four, nothing lost at the borders between
steps) by a single ``ImageProjectiveTransformV3`` op inside the tf.data graph.
Draws are stateless, from a seed per batch, so a run is repeatable.
"""
from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from cxr.params import AugmentParams  # noqa: E402

DRAWS = 7  # uniform numbers per image: angle, shift x, shift y, zoom, shear x, shear y, flip


def draw_transforms(params: AugmentParams, u: tf.Tensor, size: int) -> dict[str, tf.Tensor]:
    """Each image's transform parameters from ``u``, ``(n, DRAWS)`` uniform in [0, 1).

    Ranges as the Keras layers built from the same params: angle (degrees) and
    shears in +-their setting, shifts in +-``shift`` x the side (pixels), one zoom
    factor for both axes in 1 +- ``zoom``, a horizontal flip with probability 1/2.
    """
    u = tf.convert_to_tensor(u, tf.float32)

    def spread(column: int, half_width: float) -> tf.Tensor:
        return half_width * (2.0 * u[:, column] - 1.0)

    return {"angle": spread(0, params.rotation),
            "shift_x": spread(1, params.shift * size), "shift_y": spread(2, params.shift * size),
            "zoom": 1.0 + spread(3, params.zoom),
            "shear_x": spread(4, params.shear), "shear_y": spread(5, params.shear),
            "flip": (u[:, 6] < 0.5) & params.horizontal_flip}


def transform_matrices(t: dict[str, tf.Tensor], size: int) -> tf.Tensor:
    """``(n, 8)`` transforms as ``ImageProjectiveTransformV3`` reads them (output pixel -> input
    pixel): rotation @ shift @ zoom @ shear @ flip, each as its Keras layer builds it."""
    c = (size - 1) / 2.0                       # the centre Keras rotates and zooms about
    one, zero = tf.ones_like(t["zoom"]), tf.zeros_like(t["zoom"])

    def matrix(*rows: tuple[tf.Tensor, tf.Tensor, tf.Tensor]) -> tf.Tensor:
        return tf.stack([tf.stack(r, axis=-1) for r in (*rows, (zero, zero, one))], axis=-2)

    a = t["angle"] * (math.pi / 180.0)
    cos, sin = tf.cos(a), tf.sin(a)
    rotate = matrix((cos, -sin, c - c * cos + c * sin), (sin, cos, c - c * sin - c * cos))
    shift = matrix((one, zero, -t["shift_x"]), (zero, one, -t["shift_y"]))
    z = t["zoom"]
    zoom = matrix((z, zero, c * (1.0 - z)), (zero, z, c * (1.0 - z)))
    shear = matrix((one, t["shear_x"], zero), (t["shear_y"], one, zero))
    mirror = tf.where(t["flip"], -one, one)
    flip = matrix((mirror, zero, tf.where(t["flip"], 2.0 * c * one, zero)), (zero, one, zero))
    m = rotate @ shift @ zoom @ shear @ flip
    return tf.reshape(m, (-1, 9))[:, :8]


def augment_batch(images: tf.Tensor, params: AugmentParams, seed: tf.Tensor) -> tf.Tensor:
    """``images`` (n, s, s, c) float32 in 0..255, each moved by its own random affine drawn
    from ``seed`` (a stateless seed, shape (2,)); outside the image is filled with 0."""
    size = images.shape[1]
    u = tf.random.stateless_uniform((tf.shape(images)[0], DRAWS), seed=seed)
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transform_matrices(draw_transforms(params, u, size), size),
        output_shape=tf.shape(images)[1:3], fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return tf.clip_by_value(moved, 0.0, 255.0)


def augment_stream(ds: tf.data.Dataset, params: AugmentParams, seed: int) -> tf.data.Dataset:
    """``ds`` of ``(images, targets)`` batches with every batch augmented; the per-batch seeds
    come from a seeded stream that differs each pass (each epoch) and repeats across runs."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip(ds, seeds).map(lambda batch, s: (augment_batch(batch[0], params, s), batch[1]))
