"""Grad-CAM heatmaps for the decision score (gradient x input for `linear`), and how much heat falls in a box."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxr.data.labels import Decision
from cxr.errors import CxrError
from cxr.outputs import atomic_path


class GradCamError(CxrError):
    """Box data that cannot be used."""


def _last_conv(model) -> str:
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None) is not None and layer.output.shape
        if shape is not None and len(shape) == 4 and shape[1] > 1:
            return layer.name
    raise ValueError(f"{model.name}: no 4-D convolutional output to explain")


def _feature_forward(model):
    """A function images -> (last conv activations, probabilities) for our model shapes.

    Our models are a chain of layers around at most one nested backbone; the
    backbone is split at its last spatial feature map.
    """
    import keras

    names = [layer.name for layer in model.layers]
    if "backbone" in names:
        backbone = model.get_layer("backbone")
        inner = keras.Model(backbone.inputs, [backbone.get_layer(_last_conv(backbone)).output, backbone.output])
    else:
        inner, conv_name = None, _last_conv(model)

    def forward(x):
        features = None
        for layer in model.layers[1:]:
            if layer.name == "gray_to_rgb":
                x = layer([x, x, x])
            elif inner is not None and layer.name == "backbone":
                features, x = inner(x)
            else:
                x = layer(x)
                if inner is None and layer.name == conv_name:
                    features = x
        return features, x

    return forward


def _decision_score(probabilities, decision: Decision | None):
    """The decision's score in TensorFlow, as ``Decision.score`` computes it: the noisy-OR of
    sigmoid outputs (all of them when no decision is given), the sum of softmax classes."""
    import tensorflow as tf
    if decision is not None:
        probabilities = tf.gather(probabilities, list(decision.columns), axis=1)
        if decision.exclusive:
            return tf.reduce_sum(probabilities, axis=1)
    return 1.0 - tf.reduce_prod(1.0 - probabilities, axis=1)


def _grad_cam_heat(model, x, decision):
    """Grad-CAM on the last convolutional features, as (n, h, w, 1)."""
    import tensorflow as tf

    forward = _feature_forward(model)
    with tf.GradientTape() as tape:
        features, probabilities = forward(x)
        tape.watch(features)
        score = _decision_score(probabilities, decision)
    weights = tf.reduce_mean(tape.gradient(score, features), axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[..., None]


def _linear_heat(model, x, decision):
    """Gradient x input on the ``linear`` family's standardized thumbnail, as (n, t, t, 1):
    each cell's product is its exact share of a target's logit (first order for the noisy-OR)."""
    import tensorflow as tf

    names = [layer.name for layer in model.layers]
    z = model.get_layer("standardize")(model.get_layer("flatten")(model.get_layer("downsample")(x)))
    with tf.GradientTape() as tape:
        tape.watch(z)
        probabilities = z
        for layer in model.layers[names.index("standardize") + 1:]:
            probabilities = layer(probabilities)
        score = _decision_score(probabilities, decision)
    side = model.get_layer("downsample").output.shape[1]
    return tf.reshape(tf.nn.relu(tape.gradient(score, z) * z), (-1, side, side, 1))


def grad_cam(model, images: np.ndarray, decision: Decision | None = None) -> np.ndarray:
    """Heatmaps in [0, 1], shape ``(n, size, size)``, for the decision score (noisy-OR
    of the outputs; the output itself for a one-target model): Grad-CAM, or for
    the ``linear`` family, which has no learned feature maps, gradient x input."""
    import tensorflow as tf

    x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    linear = "standardize" in [layer.name for layer in model.layers]
    cam = (_linear_heat if linear else _grad_cam_heat)(model, x, decision)
    size = images.shape[1]
    cam = tf.image.resize(cam, (size, size), method="bilinear")[..., 0].numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0.0)


def heat_in_box(cam: np.ndarray, box: tuple[float, float, float, float], source_size: float = 1024.0) -> float | None:
    """Share of the heatmap's mass inside ``box`` = (x, y, w, h) given in
    ``source_size`` pixel coordinates (NIH boxes are on 1024x1024 images)."""
    total = float(cam.sum())
    if total <= 0:
        return None
    scale = cam.shape[0] / source_size
    x, y, w, h = (v * scale for v in box)
    x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    x1, y1 = min(int(np.ceil(x + w)), cam.shape[1]), min(int(np.ceil(y + h)), cam.shape[0])
    return float(cam[y0:y1, x0:x1].sum() / total)


BOX_COLUMNS = ["Image Index", "Finding Label", "x", "y", "w", "h"]


def read_boxes(path: str | os.PathLike):
    """NIH's radiologist boxes (``BBox_List_2017.csv``) as a frame with ``BOX_COLUMNS``."""
    import pandas as pd

    boxes = pd.read_csv(path)
    if boxes.shape[1] < len(BOX_COLUMNS):
        raise GradCamError(f"{path}: expected {len(BOX_COLUMNS)} columns (image, finding, x, y, w, h), "
                           f"got {boxes.shape[1]}")
    boxes = boxes.iloc[:, :len(BOX_COLUMNS)]  # the NIH file has empty trailing columns
    boxes.columns = BOX_COLUMNS
    return boxes


def choose_heatmap_images(names: list[str], boxed: set[str], count: int, seed: int) -> list[int]:
    """Indices of ``count`` images to explain: those with radiologist boxes first (their
    heatmaps can be scored), then a seeded random order of the rest."""
    with_boxes = [i for i, n in enumerate(names) if n in boxed]
    rng = np.random.default_rng(seed)
    others = [int(i) for i in rng.permutation(len(names)) if names[i] not in boxed]
    return (with_boxes + others)[:count]


def localization(cams: dict[str, np.ndarray], boxes) -> dict:
    """Mean share of heatmap mass inside the radiologists' boxes, over every box of the
    explained images (``cams``: image name -> heatmap)."""
    scores = [heat_in_box(cam, (box.x, box.y, box.w, box.h))
              for name, cam in cams.items() for box in boxes[boxes["Image Index"] == name].itertuples()]
    scores = [s for s in scores if s is not None]
    return {"heatmaps": len(cams), "boxes_scored": len(scores),
            "mean_heat_in_box": float(np.mean(scores)) if scores else None,
            "note": "boxes exist only for NIH official-test images"}


def save_overlay(image: np.ndarray, cam: np.ndarray, path: str | os.PathLike, title: str) -> Path:
    """The X-ray in gray with the heatmap over it, as PNG."""
    from cxr.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.2, 3.4))
    ax.imshow(np.squeeze(image), cmap="gray", vmin=0, vmax=255)
    # Heat only where there is some: a model with no localized evidence shows a plain X-ray.
    ax.imshow(np.ma.masked_less(cam, 0.05), cmap="jet", alpha=0.4, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
