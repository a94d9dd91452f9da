"""The small from-scratch CNN earlier projects on this data used, done right."""
from __future__ import annotations

import keras
from keras import layers


def build_cnn(size: int, outputs: int, dropout: float = 0.5, weights: str | None = None,
              name: str = "cnn") -> keras.Model:
    """Two conv + max-pool blocks with ReLU, dense 128, dropout, sigmoid outputs.

    ``weights`` may be a local ``.weights.h5`` file of this same architecture.
    """
    inputs = keras.Input((size, size, 1), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, filters in enumerate((32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    out = layers.Dense(outputs, activation="sigmoid", name="probabilities")(x)
    model = keras.Model(inputs, out, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model
