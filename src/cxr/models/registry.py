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
    builder: Callable  # (size, outputs, *, dropout, weights, name) -> keras.Model
    backbone: bool     # has a keras.applications backbone (two-phase transfer learning applies)


def _application(class_name: str, preprocess: str) -> Callable:
    def build(size, outputs, *, dropout, weights, name):
        import keras
        from cxr.models.backbones import build_backbone_classifier
        return build_backbone_classifier(getattr(keras.applications, class_name), preprocess, size, outputs,
                                         dropout=dropout, weights=weights, name=name)
    return build


def _cnn(size, outputs, *, dropout, weights, name):
    from cxr.models.cnn import build_cnn
    return build_cnn(size, outputs, dropout=dropout, weights=weights, name=name)


# Adding a keras.applications family is one line: its class name and its
# preprocess_input mode ('tf', 'caffe', 'torch', or 'none' if it normalizes inside).
MODELS: dict[str, ModelSpec] = {
    "cnn": ModelSpec(_cnn, backbone=False),
    "resnet50": ModelSpec(_application("ResNet50", "caffe"), backbone=True),
    "mobilenet": ModelSpec(_application("MobileNet", "tf"), backbone=True),
    "mobilenet_v2": ModelSpec(_application("MobileNetV2", "tf"), backbone=True),
    "densenet121": ModelSpec(_application("DenseNet121", "torch"), backbone=True),
    "efficientnetb0": ModelSpec(_application("EfficientNetB0", "none"), backbone=True),
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


def build_model(family: str, size: int, outputs: int, dropout: float, weights: str | None = None,
                name: str | None = None):
    """Build a registered family; see ``cxr.models`` for the input/output contract."""
    if family not in MODELS:
        raise ModelError(f"unknown model family {family!r}; expected one of {', '.join(MODELS)}")
    return MODELS[family].builder(size, outputs, dropout=dropout, weights=weights, name=name or family)
