"""The classification head every network family ends in."""
from __future__ import annotations

from collections.abc import Sequence

from keras import layers


def classification_head(features, outputs: int, units: Sequence[int] = (), dropout: float = 0.2,
                        activation: str = "sigmoid"):
    """Dense ReLU layers of ``units`` widths, each followed by dropout (dropout alone if
    there are none), then ``outputs`` probabilities (the named output): a sigmoid each
    (independent findings) or one ``softmax`` over them (one class per image)."""
    x = features
    for i, width in enumerate(units, start=1):
        x = layers.Dense(width, activation="relu", name=f"dense{i}")(x)
        x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    if not units:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(outputs, activation=activation, name="probabilities")(x)
