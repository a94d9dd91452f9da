"""Heatmaps of the decision score, and how much heat falls in a box.

Networks get HiResCAM (Draelos & Carin 2020): Grad-CAM's element-wise form, the gradient of
the decision score times the last convolutional features, summed over channels, then ReLU
(regions that raise the score). Grad-CAM proper averages the gradient over positions first;
with a global-average-pooled head (every backbone family) the two are the same map, with the
``cnn``'s flatten-dense head only the element-wise form keeps each position's own weight.
``linear`` has no feature maps: gradient x input on its thumbnail. A map with no positive
cell (nothing raises the score) is all zeros and is shown as empty, never as a result.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxr.calibrate import OUTPUT_LAYER
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


def _logits(layer, x):
    """The output layer's pre-activation (``probabilities`` is a Dense with sigmoid or softmax)."""
    import tensorflow as tf
    return tf.matmul(x, layer.kernel) + layer.bias


def _feature_forward(model):
    """A function images -> (last conv activations, output logits) for our model shapes.

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
            elif layer.name == OUTPUT_LAYER:
                x = _logits(layer, x)
            else:
                x = layer(x)
                if inner is None and layer.name == conv_name:
                    features = x
        return features, x

    return forward


def _decision_logit(z, decision: Decision | None):
    """The logit of the decision's score (``Decision.score``) from the output logits ``z``, as
    Grad-CAM explains a class's pre-softmax score: a saturated probability has no gradient.
    Noisy-OR of sigmoids (all outputs when no decision is given): with ``S = sum softplus(z_i)``,
    ``1 - score = exp(-S)``, so the logit is ``log(expm1(S))`` (``z`` itself for one output);
    a sum of softmax classes: ``logsumexp`` of theirs minus that of the others."""
    import tensorflow as tf
    columns = list(range(z.shape[-1])) if decision is None else list(decision.columns)
    if decision is not None and decision.exclusive:
        rest = [j for j in range(z.shape[-1]) if j not in columns]
        inside = tf.reduce_logsumexp(tf.gather(z, columns, axis=1), axis=1)
        return inside - tf.reduce_logsumexp(tf.gather(z, rest, axis=1), axis=1) if rest else inside
    total = tf.reduce_sum(tf.nn.softplus(tf.gather(z, columns, axis=1)), axis=1)
    return total + tf.math.log(-tf.math.expm1(-total))


def _grad_cam_heat(model, x, decision):
    """HiResCAM on the last convolutional features, as (n, h, w, 1)."""
    import tensorflow as tf

    forward = _feature_forward(model)
    with tf.GradientTape() as tape:
        features, z = forward(x)
        tape.watch(features)
        score = _decision_logit(z, decision)
    return tf.nn.relu(tf.reduce_sum(tape.gradient(score, features) * features, axis=-1))[..., None]


def _linear_heat(model, x, decision):
    """Gradient x input on the ``linear`` family's standardized thumbnail, as (n, t, t, 1):
    each cell's product is its exact share of a target's logit (first order for the noisy-OR)."""
    import tensorflow as tf

    names = [layer.name for layer in model.layers]
    z = model.get_layer("standardize")(model.get_layer("flatten")(model.get_layer("downsample")(x)))
    with tf.GradientTape() as tape:
        tape.watch(z)
        h = z
        for layer in model.layers[names.index("standardize") + 1:]:
            h = _logits(layer, h) if layer.name == OUTPUT_LAYER else layer(h)
        score = _decision_logit(h, decision)
    side = model.get_layer("downsample").output.shape[1]
    return tf.reshape(tf.nn.relu(tape.gradient(score, z) * z), (-1, side, side, 1))


def _is_linear(model) -> bool:
    return "standardize" in [layer.name for layer in model.layers]


def heatmap_method(model) -> str:
    """What ``heatmaps`` computes for ``model``, for captions."""
    return "gradient x input" if _is_linear(model) else "HiResCAM"


def heatmaps(model, images: np.ndarray, decision: Decision | None = None) -> np.ndarray:
    """Heatmaps in [0, 1], shape ``(n, size, size)``, of the decision score (``decision``'s
    rule; the noisy-OR of every output when none is given): each map divided by its peak,
    all zeros where no region raises the score (``is_empty``)."""
    import tensorflow as tf

    x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    cam = (_linear_heat if _is_linear(model) else _grad_cam_heat)(model, x, decision)
    size = images.shape[1]
    cam = tf.image.resize(cam, (size, size), method="bilinear")[..., 0].numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0.0)


def is_empty(cam: np.ndarray) -> bool:
    """A map with no heat: nothing in the image raises the score."""
    return not float(np.max(cam)) > 0


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
    return {"heatmaps": len(cams), "empty_heatmaps": sum(is_empty(c) for c in cams.values()),
            "boxes_scored": len(scores),
            "mean_heat_in_box": float(np.mean(scores)) if scores else None,
            "note": "boxes exist only for NIH official-test images"}


HEAT_FLOOR, HEAT_ALPHA = 0.05, 0.4   # heat only where there is some, over the gray image


def overlay(image: np.ndarray, cam: np.ndarray | None) -> np.ndarray:
    """The gray image (uint8) as RGB with the heatmap blended over it (jet, where the map is at
    least ``HEAT_FLOOR``): the one renderer of the report's, ``cxr predict``'s and the page's overlays."""
    from matplotlib import colormaps

    gray = np.repeat(np.squeeze(np.asarray(image)).astype(np.float64)[..., None], 3, axis=2)
    if cam is None:
        return gray.astype(np.uint8)
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
    alpha = np.where(cam >= HEAT_FLOOR, HEAT_ALPHA, 0.0)[..., None]
    return np.clip(np.rint(gray * (1 - alpha) + heat * alpha), 0, 255).astype(np.uint8)


def caption(method: str, cam: np.ndarray) -> str:
    """What the overlay shows: its method, or that the map is empty."""
    return f"{method}: empty map, no region raises the score" if is_empty(cam) else method


def save_overlay(image: np.ndarray, cam: np.ndarray, path: str | os.PathLike, title: str) -> Path:
    """``overlay`` as a PNG with ``title`` above it."""
    from cxr.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.2, 3.4))
    ax.imshow(overlay(image, cam))
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
