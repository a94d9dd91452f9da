"""The `linear` family: the scikit-learn model it claims to be, held in Keras, bit-reproducible."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxr.models import build_model  # noqa: E402
from cxr.models.linear import LinearFitError, fit_linear, round_significant, thumbnails  # noqa: E402


def _fitted(data, thumbnail=8, components=20, C=0.1, y=None):
    train = data.splits["train"]
    model = build_model("linear", data.pixels.shape[1], len(data.targets) if y is None else y.shape[1],
                        thumbnail=thumbnail, components=components)
    features = thumbnails(data.pixels, train.rows, thumbnail)
    fit_linear(model, features, train.y if y is None else y, C)
    return model, features


def _images(data, split):
    return np.asarray(data.pixels[data.splits[split].rows], dtype=np.float32)[..., None]


def test_thumbnails_are_what_the_model_pools(small_dataset):
    import keras
    model, _ = _fitted(small_dataset)
    val = small_dataset.splits["val"]
    pooled = keras.Model(model.inputs, model.get_layer("flatten").output).predict(_images(small_dataset, "val"),
                                                                                  verbose=0)
    np.testing.assert_array_equal(pooled, thumbnails(small_dataset.pixels, val.rows, 8).astype(np.float32))


def test_model_predicts_as_the_scikit_learn_pipeline_it_holds(small_dataset):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model, features = _fitted(small_dataset)
    train, val = small_dataset.splits["train"], small_dataset.splits["val"]
    got = model.predict(_images(small_dataset, "val"), verbose=0)
    val_features = thumbnails(small_dataset.pixels, val.rows, 8)
    checked = 0
    for t in range(train.y.shape[1]):
        if 0 < train.y[:, t].sum() < len(train.y):
            reference = make_pipeline(StandardScaler(), PCA(20, whiten=True, svd_solver="full"),
                                      LogisticRegression(C=0.1, tol=1e-10, max_iter=1000))
            want = reference.fit(features, train.y[:, t]).predict_proba(val_features)[:, 1]
            np.testing.assert_allclose(got[:, t], want, atol=2e-3)
            checked += 1
    assert checked >= 10  # most findings have positives in the 32-px sample's train split


def test_fit_is_bit_identical_under_last_digit_noise(small_dataset):
    """Another BLAS or CPU changes the last digits of sums; the fitted weights must not move."""
    model, features = _fitted(small_dataset)
    noisy = features * (1 + 1e-12 * np.random.default_rng(0).standard_normal(features.shape))
    again = build_model("linear", 32, len(small_dataset.targets), thumbnail=8, components=20)
    fit_linear(again, noisy, small_dataset.splits["train"].y, 0.1)
    for a, b in zip(model.get_weights(), again.get_weights()):
        assert a.tobytes() == b.tobytes()


def test_rounding_keeps_sixteen_bits_of_the_largest_value():
    a = np.array([1.0, 1 / 3, -2.5e-7, 0.0])
    r = round_significant(a)
    assert r[0] == 1.0 and r[3] == 0.0 and abs(r[1] - 1 / 3) <= 2.0 ** -17
    assert np.array_equal(r.astype(np.float32).astype(np.float64), r)  # exact in float32


def test_a_target_without_positives_gets_its_smoothed_rate(small_dataset):
    train = small_dataset.splits["train"]
    y = np.stack([train.y[:, 0], np.zeros(len(train.y), dtype=np.float32)], axis=1)
    model, _ = _fitted(small_dataset, y=y)
    p = model.predict(_images(small_dataset, "val"), verbose=0)
    np.testing.assert_allclose(p[:, 1], 0.5 / (len(y) + 1), rtol=1e-3)
    assert p[:, 0].std() > 1e-3


def test_more_components_than_images_or_pixels_is_one_line(small_dataset):
    with pytest.raises(LinearFitError, match=r"linear: 100 principal components need at least that many "
                                             r"train images and thumbnail pixels \(have \d+ images, 64 pixels\)"):
        _fitted(small_dataset, thumbnail=8, components=100)


def test_heatmap_is_each_cells_share_of_the_logit(small_dataset):
    """One target: the heat is relu(w * z) on the thumbnail, w the cell's weight on the logit."""
    from cxr.gradcam import _linear_heat, heatmaps

    train = small_dataset.splits["train"]
    model, _ = _fitted(small_dataset, y=train.y[:, :1])
    images = _images(small_dataset, "test")[:3]
    pca, out = model.get_layer("pca").get_weights(), model.get_layer("probabilities").get_weights()
    w = pca[0] @ out[0][:, 0]
    mean, variance = model.get_layer("standardize").get_weights()[:2]
    z = (thumbnails(small_dataset.pixels, small_dataset.splits["test"].rows[:3], 8) - mean) / np.sqrt(variance)
    want = np.maximum(w * z, 0)
    got = _linear_heat(model, images, None).numpy().reshape(3, -1)
    np.testing.assert_allclose(got / got.max(axis=1, keepdims=True), want / want.max(axis=1, keepdims=True),
                               atol=1e-4)
    cams = heatmaps(model, images)
    assert cams.shape == (3, 32, 32) and cams.max() == 1.0 and cams.min() >= 0.0
