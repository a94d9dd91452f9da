"""Model builders: the 1-channel 0..255 contract, every family, weights from a local file."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402

from cxr.models import MODELS, build_model, check_weights  # noqa: E402
from cxr.models.registry import ModelError  # noqa: E402


@pytest.mark.parametrize("family,size", [("cnn", 64), ("mobilenet", 64), ("mobilenet_v2", 64), ("resnet50", 64)])
@pytest.mark.parametrize("outputs", [14, 1])
def test_builders_take_one_channel_uint8_range_and_give_probabilities(family, size, outputs, sample_images):
    from cxr.data.images import read_image, resize_image
    model = build_model(family, size, outputs, dropout=0.2)
    assert model.input_shape == (None, size, size, 1) and model.output_shape == (None, outputs)
    assert model.inputs[0].name == "image" and model.layers[-1].name == "probabilities"
    x = np.stack([resize_image(read_image(p), size) for p in sample_images[:3]])[..., None].astype("float32")
    p = model(x, training=False).numpy()
    assert p.shape == (3, outputs) and ((p > 0) & (p < 1)).all()


def test_registry_offers_more_keras_applications():
    assert {"cnn", "resnet50", "mobilenet", "mobilenet_v2", "densenet121", "efficientnetb0"} <= set(MODELS)
    model = build_model("densenet121", 32, 2, dropout=0.1)
    assert model.output_shape == (None, 2)


@pytest.mark.parametrize("family", ["densenet169", "vgg16", "inception_v3", "xception", "nasnetmobile"])
def test_every_backbone_builds_at_its_smallest_size_and_has_a_heatmap(family):
    from cxr.gradcam import _feature_forward, heatmaps
    keras.utils.set_random_seed(0)
    size = MODELS[family].min_size
    model = build_model(family, size, 3, dropout=0.1)
    x = np.random.default_rng(0).integers(0, 256, (2, size, size, 1)).astype("float32")
    assert model(x, training=False).shape == (2, 3)
    features, _ = _feature_forward(model)(x)
    assert features.shape[1] > 1   # a spatial map to explain (an untrained model's heat may be all 0)
    cams = heatmaps(model, x)
    assert cams.shape == (2, size, size) and np.isfinite(cams).all() and 0 <= cams.min() <= cams.max() <= 1
    if size > 32:
        with pytest.raises(ModelError, match=f"{family} needs images of at least {size} px, got {size - 1}"):
            build_model(family, size - 1, 3, dropout=0.1)


def test_gray_input_is_repeated_to_three_channels_inside_the_model():
    model = build_model("mobilenet", 32, 1, dropout=0.0)
    rgb = model.get_layer("gray_to_rgb")
    probe = keras.Model(model.inputs, rgb.output)
    x = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 1)).astype("float32")
    out = probe.predict(x, verbose=0)
    assert out.shape == (1, 32, 32, 3) and np.array_equal(out[..., 0], out[..., 2])


def test_backbone_weights_load_from_a_local_file(tmp_path):
    donor = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = tmp_path / "mobilenet_notop.weights.h5"
    donor.save_weights(path)
    model = build_model("mobilenet", 32, 14, dropout=0.2, weights=str(path))
    for got, want in zip(model.get_layer("backbone").get_weights(), donor.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_cnn_weights_load_from_a_local_file(tmp_path):
    trained = build_model("cnn", 32, 3, dropout=0.5)
    trained.save_weights(tmp_path / "cnn.weights.h5")
    again = build_model("cnn", 32, 3, dropout=0.5, weights=str(tmp_path / "cnn.weights.h5"))
    x = np.full((1, 32, 32, 1), 100, "float32")
    np.testing.assert_allclose(again.predict(x, verbose=0), trained.predict(x, verbose=0))


def test_weights_checked_before_any_work(tmp_path):
    check_weights(None, "resnet50", "k")
    with pytest.raises(ModelError, match="models.resnet50.weights: 'imagenet' weights need internet access"
                                         ".*use null or the path of a local .weights.h5 file"):
        check_weights("imagenet", "resnet50", "models.resnet50.weights", reachable=lambda: False)
    check_weights("imagenet", "resnet50", "k", reachable=lambda: True)
    with pytest.raises(ModelError, match="not found"):
        check_weights(str(tmp_path / "missing.weights.h5"), "resnet50", "k")
    with pytest.raises(ModelError, match="no ImageNet weights"):
        check_weights("imagenet", "cnn", "k")


def test_unknown_family():
    with pytest.raises(ModelError, match="unknown model family 'vgg'"):
        build_model("vgg", 32, 1, dropout=0.1)


@pytest.mark.parametrize("family,units", [("cnn", (128,)), ("cnn", ()), ("resnet50", ()), ("resnet50", (512, 512))])
def test_the_head_is_dense_relu_layers_each_with_dropout_then_the_outputs(family, units):
    model = build_model(family, 32, 3, dropout=0.3, head_units=units)
    head = [layer for layer in model.layers if layer.name.startswith(("dense", "dropout", "probabilities"))]
    expected = [(f"dense{i}", f"dropout{i}") for i in range(1, len(units) + 1)]
    assert [layer.name for layer in head] == [n for pair in expected for n in pair] + (
        [] if units else ["dropout"]) + ["probabilities"]
    assert [layer.units for layer in head if isinstance(layer, keras.layers.Dense)] == [*units, 3]
    assert {layer.rate for layer in head if isinstance(layer, keras.layers.Dropout)} == {0.3}
    assert all(layer.activation.__name__ == "relu" for layer in head[:-1] if isinstance(layer, keras.layers.Dense))
