"""The small from-scratch CNN earlier projects on this data used, done right."""
from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from cxr.models.head import classification_head


def build_cnn(size: int, outputs: int, dropout: float = 0.5, head_units: Sequence[int] = (128,),
              weights: str | None = None, name: str = "cnn", activation: str = "sigmoid") -> keras.Model:
    """Two conv + max-pool blocks with ReLU, flattened, then the head (by default dense 128,
    dropout) and sigmoid (or softmax) outputs.

    ``weights`` may be a local ``.weights.h5`` file of this same architecture.
    """
    inputs = keras.Input((size, size, 1), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, filters in enumerate((32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    out = classification_head(x, outputs, head_units, dropout, activation)
    model = keras.Model(inputs, out, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model
