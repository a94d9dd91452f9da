"""The vectorized augmentation: the Keras layers' transforms, one op per batch, seeded."""
import numpy as np
import pytest

from cxr.augment import DRAWS, augment_batch, draw_transforms, transform_matrices
from cxr.data.images import read_image, resize_image
from cxr.params import AugmentParams

ALL = AugmentParams(rotation=10, shift=0.1, zoom=0.2, shear=0.3, horizontal_flip=True)
NONE = AugmentParams(rotation=0, shift=0, zoom=0, shear=0, horizontal_flip=False)
SIZE = 64


@pytest.fixture(scope="module")
def xray(sample_images):
    """One real NIH image at 64 px as a float32 (1, 64, 64, 1) batch."""
    return resize_image(read_image(sample_images[0]), SIZE).astype("float32")[None, ..., None]


def _as_3x3(m):
    m = np.asarray(m, dtype="float64")
    return np.concatenate([m, np.ones((len(m), 1))], axis=1).reshape(-1, 3, 3)


def test_parameter_ranges_are_those_of_the_keras_layers():
    low = draw_transforms(ALL, np.zeros((1, DRAWS)), SIZE)
    high = draw_transforms(ALL, np.full((1, DRAWS), 1 - 1e-7), SIZE)
    expected = {"angle": 10, "shift_x": 0.1 * SIZE, "shift_y": 0.1 * SIZE, "shear_x": 0.3, "shear_y": 0.3}
    for key, bound in expected.items():
        assert low[key].numpy()[0] == pytest.approx(-bound, abs=1e-4)
        assert high[key].numpy()[0] == pytest.approx(bound, abs=1e-4)
    assert (low["zoom"].numpy()[0], high["zoom"].numpy()[0]) == (pytest.approx(0.8), pytest.approx(1.2, abs=1e-5))
    assert low["flip"].numpy()[0] and not high["flip"].numpy()[0]
    assert not draw_transforms(NONE, np.zeros((1, DRAWS)), SIZE)["flip"].numpy()[0]
    u = np.random.default_rng(0).random((4000, DRAWS))
    flips = draw_transforms(ALL, u, SIZE)["flip"].numpy().mean()
    assert 0.45 < flips < 0.55


def test_matrices_are_the_keras_layers_matrices_composed_in_their_order():
    import keras
    import tensorflow as tf
    n = 6
    t = draw_transforms(ALL, np.random.default_rng(1).random((n, DRAWS)).astype("float32"), SIZE)
    zeros, ones = tf.zeros(n), tf.ones(n)
    rotate = keras.layers.RandomRotation(ALL.rotation / 360)._compute_affine_matrix(
        0.5, 0.5, t["angle"], zeros, zeros, ones, zeros, zeros, SIZE, SIZE)
    shift = keras.layers.RandomTranslation(ALL.shift, ALL.shift)._get_translation_matrix(
        tf.stack([t["shift_x"], t["shift_y"]], axis=1))
    zoom = keras.layers.RandomZoom(ALL.zoom)._get_zoom_matrix(tf.stack([t["zoom"], t["zoom"]], axis=1), SIZE, SIZE)
    shear = keras.layers.RandomShear(ALL.shear, ALL.shear)._get_shear_matrix(
        tf.stack([t["shear_x"], t["shear_y"]], axis=1))
    flip = np.tile(np.eye(3), (n, 1, 1))
    flipped = t["flip"].numpy()
    flip[flipped, 0, 0], flip[flipped, 0, 2] = -1, SIZE - 1
    assert 0 < flipped.sum() < n
    keras_order = _as_3x3(rotate) @ _as_3x3(shift) @ _as_3x3(zoom) @ _as_3x3(shear) @ flip
    np.testing.assert_allclose(transform_matrices(t, SIZE).numpy(), keras_order.reshape(n, 9)[:, :8], atol=1e-4)


def test_no_transform_leaves_the_image_exactly_as_it_was(xray):
    np.testing.assert_array_equal(augment_batch(xray, NONE, np.array([0, 1])).numpy(), xray)


def test_a_rotation_moves_pixels_as_keras_random_rotation_does(xray):
    import keras
    import tensorflow as tf
    rotation = AugmentParams(rotation=10, shift=0, zoom=0, shear=0, horizontal_flip=False)
    ours = augment_batch(xray, rotation, np.array([3, 4])).numpy()
    u = tf.random.stateless_uniform((1, DRAWS), seed=[3, 4])
    matrix = transform_matrices(draw_transforms(rotation, u, SIZE), SIZE)
    layer = keras.layers.RandomRotation(rotation.rotation / 360, fill_mode="constant")
    theirs = np.asarray(layer.transform_images(xray, {"rotation_matrix": matrix}))
    assert np.abs(ours - xray).mean() > 1.0
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_a_flip_mirrors_exactly(xray):
    flip = AugmentParams(rotation=0, shift=0, zoom=0, shear=0, horizontal_flip=True)
    batch = np.repeat(xray, 16, axis=0)
    out = augment_batch(batch, flip, np.array([0, 7])).numpy()
    mirrored = [np.array_equal(o, xray[0, :, ::-1]) for o in out]
    unchanged = [np.array_equal(o, xray[0]) for o in out]
    assert all(m != u for m, u in zip(mirrored, unchanged)) and 0 < sum(mirrored) < 16


def test_each_image_gets_its_own_transform_and_a_seed_repeats_them(xray):
    batch = np.repeat(xray, 4, axis=0)
    a, b = (augment_batch(batch, ALL, np.array([9, 9])).numpy() for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert len({o.tobytes() for o in a}) == 4
    assert not np.array_equal(a, augment_batch(batch, ALL, np.array([9, 10])).numpy())
    assert a.min() >= 0 and a.max() <= 255
