"""The baseline every image model has to beat: thumbnail -> standardize -> PCA -> logistic regression.

Fitted by scikit-learn (no gradient training), then held in ordinary Keras
layers, so evaluate, export, predict, serve and MLflow treat it like any
other variant:

    image (size x size, 0..255) -> AveragePooling2D  "downsample"   (to ``thumbnail`` px)
                                -> Flatten
                                -> Normalization     "standardize"  (train mean / variance per pixel)
                                -> Dense             "pca"          (whitened principal components)
                                -> Dense, sigmoid    "probabilities" (one logistic regression per target;
                                                                     softmax: one multinomial regression)

Bit-reproducible: the thumbnails are exact (block means of integers), the
logistic fits run Newton's method to convergence (a unique optimum, reached
to ~1e-12), and every fitted array is rounded to 16 significant bits, far
above the last-digit differences another BLAS / CPU produces.
"""
from __future__ import annotations

import numpy as np

from cxr.errors import CxrError

SIGNIFICANT_BITS = 16
_BLOCK = 1024  # images downsampled at a time: memory stays bounded at any split size


class LinearFitError(CxrError):
    """A linear model that cannot be fitted as configured."""


def build_linear(size: int, outputs: int, thumbnail: int, components: int, name: str = "linear",
                 activation: str = "sigmoid"):
    """The architecture, with untrained (identity / zero) weights; ``fit_linear`` fills them."""
    import keras
    from keras import layers

    if size % thumbnail:
        raise LinearFitError(f"{name}: thumbnail size {thumbnail} must divide the image size {size}")
    inputs = keras.Input((size, size, 1), name="image")
    x = layers.AveragePooling2D(size // thumbnail, name="downsample")(inputs)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Normalization(axis=-1, name="standardize")(x)
    x = layers.Dense(components, name="pca")(x)
    out = layers.Dense(outputs, activation=activation, name="probabilities")(x)
    return keras.Model(inputs, out, name=name)


def thumbnails(pixels: np.ndarray, rows: np.ndarray, thumbnail: int) -> np.ndarray:
    """``(n, thumbnail**2)`` float64 block means of the cached uint8 images at ``rows``,
    exactly what the model's AveragePooling2D computes (sums of integers are exact)."""
    size = pixels.shape[1]
    k = size // thumbnail
    out = np.empty((len(rows), thumbnail * thumbnail))
    for start in range(0, len(rows), _BLOCK):
        block = np.asarray(pixels[rows[start:start + _BLOCK]], dtype=np.float64)
        out[start:start + len(block)] = block.reshape(len(block), thumbnail, k, thumbnail, k).mean(axis=(2, 4)) \
            .reshape(len(block), -1)
    return out


def round_significant(a: np.ndarray, bits: int = SIGNIFICANT_BITS) -> np.ndarray:
    """``a`` on a grid of 2**-bits of its largest magnitude (so every value is exact in float32)."""
    a = np.asarray(a, dtype=np.float64)
    top = float(np.max(np.abs(a))) if a.size else 0.0
    if top == 0.0:
        return a.copy()
    step = 2.0 ** (np.floor(np.log2(top)) - bits)
    return np.round(a / step) * step


def _logistic(features: np.ndarray, y: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    """Weights and bias of an L2 logistic regression; a target with one class in
    train gets zero weights and the logit of its smoothed rate."""
    from sklearn.linear_model import LogisticRegression

    positives = int(y.sum())
    if positives in (0, len(y)):
        rate = (positives + 0.5) / (len(y) + 1.0)
        return np.zeros(features.shape[1]), float(np.log(rate / (1 - rate)))
    fit = LogisticRegression(C=C, solver="newton-cholesky", tol=1e-12, max_iter=100).fit(features, y)
    return fit.coef_[0], float(fit.intercept_[0])


def _multinomial(features: np.ndarray, y: np.ndarray, C: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``(features, classes)`` and biases of one L2 multinomial logistic regression
    over one-hot ``y`` (its softmax is the model's output)."""
    from sklearn.linear_model import LogisticRegression

    present = y.sum(axis=0) > 0
    if not present.all():
        raise LinearFitError(f"{name}: class {int(np.flatnonzero(~present)[0])} has no train image; "
                             "a multinomial regression needs every class")
    fit = LogisticRegression(C=C, solver="newton-cholesky", tol=1e-12, max_iter=100).fit(features, y.argmax(axis=1))
    return fit.coef_.T, fit.intercept_


def fit_linear(model, features: np.ndarray, y: np.ndarray, C: float) -> None:
    """Fit standardization, whitened PCA and one logistic regression per target on
    ``features`` (``thumbnails`` of the train split) and write them into ``model``."""
    from sklearn.decomposition import PCA

    components = model.get_layer("pca").units
    n, d = features.shape
    if components > min(n, d):
        raise LinearFitError(f"{model.name}: {components} principal components need at least that many train "
                             f"images and thumbnail pixels (have {n} images, {d} pixels)")
    mean = round_significant(features.mean(axis=0))
    variance = round_significant(features.var(axis=0))
    variance = np.where(variance > 0, variance, 1.0)  # a constant pixel carries nothing
    z = (features - mean) / np.sqrt(variance)
    pca = PCA(components, whiten=True, svd_solver="full").fit(z)
    # transform(z) = (z - mean_) @ components_.T / sqrt(explained_variance_)
    kernel = round_significant(pca.components_.T / np.sqrt(pca.explained_variance_))
    bias = round_significant(-pca.mean_ @ kernel)
    scores = z @ kernel + bias  # the fit sees the rounded projection the model computes
    if model.get_layer("probabilities").activation.__name__ == "softmax":
        weights, intercepts = _multinomial(scores, y, C, model.name)
    else:
        fits = [_logistic(scores, y[:, t], C) for t in range(y.shape[1])]
        weights, intercepts = np.stack([w for w, _ in fits], axis=1), np.array([b for _, b in fits])
    weights, intercepts = round_significant(weights), round_significant(intercepts)

    f32 = np.float32
    standardize = model.get_layer("standardize")
    standardize.set_weights([mean.astype(f32), variance.astype(f32), np.array(n, dtype="int64")])
    standardize.finalize_state()  # the layer computes from copies it takes here (as after adapt())
    model.get_layer("pca").set_weights([kernel.astype(f32), bias.astype(f32)])
    model.get_layer("probabilities").set_weights([weights.astype(f32), intercepts.astype(f32)])
