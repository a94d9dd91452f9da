"""Heatmaps that can fail on content: a network taught that a bright patch is the finding must
put its heat on the patch, through the function the report, `cxr predict` and `cxr serve` use."""
import keras
import numpy as np
import pytest

from cxr.data.labels import Decision
from cxr.gradcam import caption, heatmaps, is_empty, overlay
from cxr.models.registry import build_model

PATCH = Decision("patch", "no patch", (0,))


def _patch_images(n: int, size: int, patch: int, seed: int, quadrants: bool = False):
    """Noisy gray images, half with a bright square (label 1) at a random place (inside a random
    quadrant with ``quadrants``); returns images, labels and each square's top-left corner."""
    rng = np.random.default_rng(seed)
    images = np.clip(rng.normal(70, 20, (n, size, size, 1)), 0, 255)
    labels = (np.arange(n) % 2).astype("float32")
    corners = np.zeros((n, 2), int)
    for i in np.flatnonzero(labels):
        if quadrants:
            half = size // 2
            q = rng.integers(0, 2, 2) * half
            corners[i] = q + rng.integers(0, half - patch + 1, 2)
        else:
            corners[i] = rng.integers(0, size - patch + 1, 2)
        r, c = corners[i]
        images[i, r:r + patch, c:c + patch, 0] = 230
    return images.astype("float32"), labels[:, None], corners


def _trained(family: str, size: int, images, labels, epochs: int, learning_rate: float):
    from cxr.train import recalibrate_batch_norm
    keras.utils.set_random_seed(0)
    model = build_model(family, size, 1, dropout=0.0, head_units=(32,) if family == "cnn" else ())
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
    model.fit(images, labels, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    if family != "cnn":   # as training does for a backbone from scratch (BatchNorm's moving statistics)
        recalibrate_batch_norm(model, images[:128])
    return model


def test_cnn_heatmap_peaks_inside_the_patch():
    size, patch = 32, 10
    images, labels, _ = _patch_images(600, size, patch, seed=0)
    model = _trained("cnn", size, images, labels, epochs=6, learning_rate=3e-3)
    test, test_labels, corners = _patch_images(80, size, patch, seed=1)
    positive = np.flatnonzero(test_labels[:, 0])
    p = model.predict(test, verbose=0)[:, 0]
    assert p[positive].mean() > 0.9 > 0.1 > p[test_labels[:, 0] == 0].mean()   # it learnt the patch
    cams = heatmaps(model, test[positive], PATCH)
    inside = [r <= np.unravel_index(cam.argmax(), cam.shape)[0] < r + patch
              and c <= np.unravel_index(cam.argmax(), cam.shape)[1] < c + patch
              for cam, (r, c) in zip(cams, corners[positive])]
    assert np.mean(inside) >= 0.75, np.mean(inside)   # 0.875 measured


@pytest.mark.pipeline   # 25 s of training: kept out of `make test-fast`
def test_backbone_heatmap_is_hottest_in_the_patchs_quadrant():
    """MobileNet at 128 px explains a 4 x 4 feature map (cells of 32 px): too coarse for the peak
    to land inside a 40-px patch (it does for 40% of images), fine enough for the quadrant
    holding the patch to be the hottest."""
    size, patch = 128, 40
    images, labels, _ = _patch_images(200, size, patch, seed=2, quadrants=True)
    model = _trained("mobilenet", size, images, labels, epochs=3, learning_rate=1e-3)
    test, test_labels, corners = _patch_images(40, size, patch, seed=3, quadrants=True)
    positive = np.flatnonzero(test_labels[:, 0])
    cams = heatmaps(model, test[positive], PATCH)
    half = size // 2
    hottest = [np.unravel_index(cam.reshape(2, half, 2, half).mean(axis=(1, 3)).argmax(), (2, 2))
               for cam in cams]
    right = [tuple(h) == (r // half, c // half) for h, (r, c) in zip(hottest, corners[positive])]
    assert np.mean(right) >= 0.9, np.mean(right)   # 1.0 measured


def test_an_empty_map_is_said_to_be_empty_and_drawn_without_heat():
    image = np.full((16, 16), 100, np.uint8)
    empty, hot = np.zeros((16, 16)), np.zeros((16, 16))
    hot[4:8, 4:8] = 1.0
    assert is_empty(empty) and not is_empty(hot)
    assert caption("HiResCAM", empty) == "HiResCAM: empty map, no region raises the score"
    assert caption("HiResCAM", hot) == "HiResCAM"
    assert (overlay(image, empty) == 100).all()              # the plain image: no heat painted
    drawn = overlay(image, hot)
    assert (drawn[4:8, 4:8] != 100).any() and (drawn[10:, 10:] == 100).all()


@pytest.mark.parametrize("exclusive", [False, True])
def test_the_map_follows_the_decision_rule(exclusive):
    """The heat of the abnormal score of a softmax bundle (every class but No Finding) is not that
    of all its outputs summed (which is constant: a softmax sums to 1)."""
    keras.utils.set_random_seed(1)
    model = build_model("cnn", 32, 3, dropout=0.0, head_units=(8,), activation="softmax" if exclusive else "sigmoid")
    x = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 1)).astype("float32")
    rule = Decision("abnormal", "normal", (1, 2), exclusive=exclusive)
    by_rule, by_all = heatmaps(model, x, rule), heatmaps(model, x, None)
    assert not np.allclose(by_rule, by_all)


def served_heatmap_is_the_rules_map(project, image_path) -> dict:
    """``cxr serve``'s heatmap for one upload against ``heatmaps`` of the bundle's Keras model through
    the bundle's decision rule, drawn by ``overlay``: the same pixels. Returns the served body."""
    import base64
    import io

    from PIL import Image

    from cxr.data.images import read_image, resize_image
    from cxr.predict import load_predictor
    from cxr.serve import create_app
    predictor = load_predictor(project / "models" / "cnn", root=project)
    body = create_app(predictor).test_client().post(
        "/api/predict?heatmap=1", data={"file": (io.BytesIO(image_path.read_bytes()), image_path.name)},
        content_type="multipart/form-data").get_json()
    small = resize_image(read_image(image_path), predictor.size)
    want = heatmaps(predictor.keras_model, small[None, ..., None].astype("float32"), predictor.rule)[0]
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"].split(",", 1)[1]))))
    np.testing.assert_array_equal(served, overlay(small, want))
    assert body["heatmap_empty"] == is_empty(want)
    return body
