"""Any ``keras.applications`` backbone as a 1-channel, 0..255-input classifier."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
from keras import layers

from cxr.models.head import classification_head

# ImageNet statistics each family's own ``preprocess_input`` applies.
_CAFFE_MEAN = (103.939, 116.779, 123.68)  # BGR means; gray input makes the BGR order moot
_TORCH_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_TORCH_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _preprocess(mode: str, x):
    """The family's ``preprocess_input`` as layers, so it is saved inside the model."""
    if mode == "tf":  # scale to [-1, 1]
        return layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)
    if mode == "caffe":
        return layers.Normalization(mean=_CAFFE_MEAN, variance=(1.0, 1.0, 1.0), name="preprocess")(x)
    if mode == "torch":
        return layers.Normalization(mean=_TORCH_MEAN, variance=[s * s for s in _TORCH_STD], name="preprocess")(x)
    if mode == "none":  # the family normalizes inside (EfficientNet)
        return x
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def build_backbone_classifier(application: Callable[..., keras.Model], preprocess: str, size: int,
                              outputs: int, dropout: float = 0.2, head_units: Sequence[int] = (),
                              weights: str | None = None, name: str = "model",
                              activation: str = "sigmoid") -> keras.Model:
    """``application`` (e.g. ``keras.applications.ResNet50``) without its top, plus GAP and the
    head (by default dropout alone) with sigmoid (or softmax) outputs.

    ``weights``: None (random init), ``'imagenet'`` or a local backbone
    ``.weights.h5`` file. With pretrained weights the backbone runs in
    inference mode so its BatchNorm statistics survive fine-tuning (the
    Keras transfer-learning recipe); from scratch they are trained.
    """
    inputs = keras.Input((size, size, 1), name="image")
    x = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    x = _preprocess(preprocess, x)
    backbone = application(include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg")
    backbone.name = "backbone"
    x = backbone(x, training=False) if weights is not None else backbone(x)
    out = classification_head(x, outputs, head_units, dropout, activation)
    return keras.Model(inputs, out, name=name)
