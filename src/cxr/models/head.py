"""The classification head every network family ends in."""
from __future__ import annotations

from collections.abc import Sequence

from keras import layers


def classification_head(features, outputs: int, units: Sequence[int] = (), dropout: float = 0.2):
    """Dense ReLU layers of ``units`` widths, each followed by dropout (dropout alone if
    there are none), then ``outputs`` sigmoid probabilities (the named output)."""
    x = features
    for i, width in enumerate(units, start=1):
        x = layers.Dense(width, activation="relu", name=f"dense{i}")(x)
        x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    if not units:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(outputs, activation="sigmoid", name="probabilities")(x)
