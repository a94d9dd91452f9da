"""The one registry mapping family names to builders."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cxr.errors import CxrError


class ModelError(CxrError):
    """A model that cannot be built as configured."""


@dataclass(frozen=True)
class ModelSpec:
    builder: Callable  # (size, outputs, *, name, **family options) -> keras.Model
    backbone: bool     # has a keras.applications backbone (two-phase transfer learning applies)
    fitted: bool = False  # fitted in closed form by cxr.models.linear, not trained by gradient descent
    min_size: int = 32    # smallest image.size the architecture accepts


def _application(class_name: str, preprocess: str) -> Callable:
    def build(size, outputs, *, name, dropout, head_units=(), weights=None, activation="sigmoid"):
        import keras
        from cxr.models.backbones import build_backbone_classifier
        return build_backbone_classifier(getattr(keras.applications, class_name), preprocess, size, outputs,
                                         dropout=dropout, head_units=head_units, weights=weights, name=name,
                                         activation=activation)
    return build


def _cnn(size, outputs, *, name, dropout, head_units=(128,), weights=None, activation="sigmoid"):
    from cxr.models.cnn import build_cnn
    return build_cnn(size, outputs, dropout=dropout, head_units=head_units, weights=weights, name=name,
                     activation=activation)


def _linear(size, outputs, *, thumbnail, components, name, activation="sigmoid"):
    from cxr.models.linear import build_linear
    return build_linear(size, outputs, thumbnail, components, name=name, activation=activation)


# Adding a keras.applications family is one line: its class name and its
# preprocess_input mode ('tf', 'caffe', 'torch', or 'none' if it normalizes inside).
MODELS: dict[str, ModelSpec] = {
    "linear": ModelSpec(_linear, backbone=False, fitted=True),
    "cnn": ModelSpec(_cnn, backbone=False),
    "resnet50": ModelSpec(_application("ResNet50", "caffe"), backbone=True),
    "mobilenet": ModelSpec(_application("MobileNet", "tf"), backbone=True),
    "mobilenet_v2": ModelSpec(_application("MobileNetV2", "tf"), backbone=True),
    "densenet121": ModelSpec(_application("DenseNet121", "torch"), backbone=True),
    "densenet169": ModelSpec(_application("DenseNet169", "torch"), backbone=True),
    "efficientnetb0": ModelSpec(_application("EfficientNetB0", "none"), backbone=True),
    "vgg16": ModelSpec(_application("VGG16", "caffe"), backbone=True),
    "inception_v3": ModelSpec(_application("InceptionV3", "tf"), backbone=True, min_size=75),
    "xception": ModelSpec(_application("Xception", "tf"), backbone=True, min_size=71),
    "nasnetmobile": ModelSpec(_application("NASNetMobile", "tf"), backbone=True),
}

_IMAGENET_HOST = ("storage.googleapis.com", 443)


def check_weights(weights: str | None, family: str, key: str, reachable: Callable[[], bool] | None = None) -> None:
    """Fail fast (before any data loading) on weights that cannot be had.

    ``None`` always works; a path must be an existing ``.weights.h5`` /
    ``.h5`` file; ``'imagenet'`` needs the download host, unless Keras already
    cached the file.
    """
    if weights is None:
        return
    if weights == "imagenet":
        if family == "cnn":
            raise ModelError(f"{key}: the cnn family has no ImageNet weights; use null")
        if (reachable or _imagenet_reachable)():
            return
        raise ModelError(f"{key}: 'imagenet' weights need internet access to download them (unreachable here); "
                         "use null or the path of a local .weights.h5 file")
    path = Path(weights)
    if not path.name.endswith(".h5"):
        raise ModelError(f"{key}: expected null, 'imagenet' or a path to a .weights.h5 file, got {weights!r}")
    if not path.is_file():
        raise ModelError(f"{key}: weights file {weights} not found")


def _imagenet_reachable(timeout: float = 3.0) -> bool:
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    if cache.is_dir() and any(cache.glob("*notop*")):
        return True
    try:
        socket.create_connection(_IMAGENET_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def build_model(family: str, size: int, outputs: int, name: str | None = None, **options):
    """Build a registered family; see ``cxr.models`` for the input/output contract.

    ``options`` are the family's own: ``dropout``, ``head_units`` (dense layer widths
    before the outputs) and ``weights`` for networks,
    ``thumbnail`` and ``components`` for ``linear``; every family takes
    ``activation``: ``sigmoid`` (default) or ``softmax`` (one class per image).
    """
    if family not in MODELS:
        raise ModelError(f"unknown model family {family!r}; expected one of {', '.join(MODELS)}")
    if size < MODELS[family].min_size:
        raise ModelError(f"{family} needs images of at least {MODELS[family].min_size} px, got {size}")
    return MODELS[family].builder(size, outputs, name=name or family, **options)
