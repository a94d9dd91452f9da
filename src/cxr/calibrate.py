"""Calibrated probabilities: a monotone map per output, fitted on the validation split and
folded into the model's output layer, so every exported format outputs calibrated scores.

Every family ends in a Dense layer named ``probabilities`` (sigmoid or softmax). Both maps
act on its logit ``z``: temperature scaling ``z / T`` and Platt scaling ``a z + b``, so
folding one in is rescaling that layer's kernel and bias: no new layer, no new op, and
each output's ranking of images (its AUROC) is unchanged. A softmax gets one temperature
(Platt per class would no longer be a softmax over the same ranking).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("temperature", "platt", "none")
OUTPUT_LAYER = "probabilities"
# An output needs this many validation images of each side to be fitted; fewer keep the identity
# (a temperature fitted on 2 positives is noise).
MIN_PER_SIDE = 5
_EPS = 1e-7
_LOG_T = (np.log(0.05), np.log(20.0))   # temperature bounds: far past any fit seen, finite


@dataclass(frozen=True)
class Calibration:
    """``scale`` and ``shift`` per output (``a z + b``; temperature: ``a = 1/T``, ``b = 0``)."""
    method: str
    scale: tuple[float, ...]
    shift: tuple[float, ...]
    exclusive: bool = False

    def as_dict(self) -> dict:
        return {"method": self.method, "scale": list(self.scale), "shift": list(self.shift),
                "exclusive": self.exclusive}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(d["method"], tuple(d["scale"]), tuple(d["shift"]), bool(d.get("exclusive", False)))


def logits(p: np.ndarray, exclusive: bool = False) -> np.ndarray:
    """The output layer's logits recovered from its probabilities (softmax: up to a constant per image)."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) if exclusive else np.log(p / (1 - p))


def _activate(z: np.ndarray, exclusive: bool) -> np.ndarray:
    if exclusive:
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-z))


def apply(p: np.ndarray, calibration: Calibration) -> np.ndarray:
    """What the folded model outputs, given what the unfolded one did."""
    z = logits(p, calibration.exclusive)
    return _activate(z * np.asarray(calibration.scale) + np.asarray(calibration.shift), calibration.exclusive)


def invert(p: np.ndarray, calibration: Calibration) -> np.ndarray:
    """What the model output before ``calibration`` was folded in (for before/after figures)."""
    inverse = Calibration(calibration.method, tuple(1 / np.asarray(calibration.scale)),
                          tuple(-np.asarray(calibration.shift) / np.asarray(calibration.scale)),
                          calibration.exclusive)
    return apply(p, inverse)


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0, z) - y * z))   # binary cross-entropy from logits


def _temperature(z: np.ndarray, y: np.ndarray, exclusive: bool) -> float:
    from scipy.optimize import minimize_scalar

    def loss(log_t):
        zt = z / np.exp(log_t)
        if exclusive:
            zt = zt - zt.max(axis=1, keepdims=True)
            return float(-np.mean(np.sum(y * (zt - np.log(np.exp(zt).sum(axis=1, keepdims=True))), axis=1)))
        return _nll(zt, y)
    return float(np.exp(minimize_scalar(loss, bounds=_LOG_T, method="bounded",
                                        options={"xatol": 1e-6}).x))


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    fit = LogisticRegression(C=1e4, solver="newton-cholesky", tol=1e-10).fit(z[:, None], y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def _fittable(y: np.ndarray) -> bool:
    positives = int(y.sum())
    return positives >= MIN_PER_SIDE and len(y) - positives >= MIN_PER_SIDE


def fit(y: np.ndarray, p: np.ndarray, method: str, exclusive: bool = False) -> Calibration:
    """The map that minimizes the validation cross-entropy of ``p`` (the model's validation
    outputs) against ``y``; identity per output with fewer than ``MIN_PER_SIDE`` of either side."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    y = np.asarray(y, dtype=np.float64)
    outputs = y.shape[1]
    scale, shift = np.ones(outputs), np.zeros(outputs)
    z = logits(p, exclusive)
    if method == "none":
        pass
    elif exclusive:
        if all(_fittable(y[:, j]) for j in range(outputs)):
            scale[:] = 1 / _temperature(z, y, True)
    else:
        for j in range(outputs):
            if not _fittable(y[:, j]):
                continue
            if method == "temperature":
                scale[j] = 1 / _temperature(z[:, j], y[:, j], False)
            else:
                scale[j], shift[j] = _platt(z[:, j], y[:, j])
    # Rounded so the folded weights, and the model file, do not carry another CPU's last digits.
    return Calibration(method, tuple(float(np.float32(round(s, 6))) for s in scale),
                       tuple(float(np.float32(round(b, 6))) for b in shift), exclusive)


def fold(model, calibration: Calibration) -> None:
    """Rescale the model's output layer in place so it outputs calibrated probabilities."""
    layer = model.get_layer(OUTPUT_LAYER)
    kernel, bias = layer.get_weights()
    scale = np.asarray(calibration.scale, dtype=np.float64)
    layer.set_weights([(kernel * scale).astype(kernel.dtype),
                       (bias * scale + np.asarray(calibration.shift)).astype(bias.dtype)])
