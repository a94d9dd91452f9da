"""Predicting on image files with a trained or exported model (``cxr predict``, ``cxr serve``)."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.data.images import ImageReadError, quiet_stderr, read_image, resize_image
from cxr.data.labels import Decision
from cxr.errors import CxrError
from cxr.bundle import COREML_FILE, MANIFEST_FILE, BundleError, read_bundle
from cxr.paths import MODELS, export_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


class PredictError(CxrError):
    """A model that cannot be found or used."""


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with stderr silenced: its C++ start-up lines (absl, oneDNN)
    ignore TF_CPP_MIN_LOG_LEVEL and would bury the one-line errors of a command."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_stderr():
        import tensorflow  # noqa: F401
        import keras  # noqa: F401


@dataclass
class Predictor:
    """A model from a bundle, with everything needed to turn files into findings."""
    name: str                 # shown in the output: variant and format
    variant: str
    targets: list[str]
    size: int
    decision: str             # the positive class of the yes/no decision: abnormal, or a binary task's target
    threshold: float          # the bundle's threshold for this format, chosen on validation
    rule: Decision            # how the decision's score comes from the outputs
    run: object               # images (n, s, s, 1) 0..255 -> probabilities
    keras_model: object = None
    flags: list[str] = field(default_factory=list)   # why its answers should not be acted on, one line each
    chosen_because: str | None = None   # when the default was taken (no --model): which variant and why

    def require_gradients(self) -> None:
        """Heatmaps need the Keras model: say so before any image is read."""
        if self.keras_model is None:
            raise PredictError("--heatmap needs the Keras model (gradients); pass --model models/<variant>")

    def predict_pixels(self, pixels: np.ndarray) -> dict:
        """Findings for a decoded image of any size."""
        return self.predict_resized(resize_image(pixels, self.size))

    def heatmap(self, small: np.ndarray) -> np.ndarray | None:
        """The decision's heatmap (``cxr.gradcam.heatmaps`` through the bundle's rule) for an image
        already ``size`` x ``size``; None for a model without gradients (TFLite)."""
        if self.keras_model is None:
            return None
        from cxr.gradcam import heatmaps
        return heatmaps(self.keras_model, small[None, ..., None].astype(np.float32), self.rule)[0]

    @property
    def heatmap_method(self) -> str | None:
        from cxr.gradcam import heatmap_method
        return None if self.keras_model is None else heatmap_method(self.keras_model)

    def predict_resized(self, small: np.ndarray) -> dict:
        """Findings for an image already ``size`` x ``size``."""
        p = np.asarray(self.run(small[None, ..., None].astype(np.float32)))[0]
        score = float(self.rule.score(p[None])[0])
        return {"model": self.name,
                "findings": {t: round(float(v), 6) for t, v in zip(self.targets, p)},
                # Named after the decision (abnormal_score / abnormal, Infiltration_score / Infiltration).
                "decision": self.decision, f"{self.decision}_score": round(score, 6),
                self.decision: bool(score >= self.threshold), "threshold": self.threshold, "flags": self.flags}


EVERY_VARIANT_FLAGGED = "every exported variant is flagged; this one has the best validation AUROC of them"


def best_variant(root: Path) -> tuple[str, bool]:
    """The exported variant to use by default and whether every variant is flagged
    (``cxr.report.default_variant`` over the bundles' manifests)."""
    from cxr.report import default_variant

    manifests = {path.parent.parent.name: json.loads(path.read_text())
                 for path in sorted((root / MODELS).glob(f"*/export/{MANIFEST_FILE}"))}
    best, all_flagged = default_variant({v: ((m.get("validation") or {}).get("decision_auroc"), m.get("flags"))
                                         for v, m in manifests.items()})
    if best is None:
        raise PredictError(f"{root / MODELS}: no usable exported model; run `dvc repro` or pass --model")
    return best, all_flagged


def load_predictor(model: str | os.PathLike | None = None, root: str | os.PathLike = ".") -> Predictor:
    """``model``: a bundle (``models/<variant>/export``, or the variant's folder), one
    model file inside it, or None for the default (``best_variant``). Everything else (targets,
    size, threshold, flags) comes from the bundle's manifest."""
    root = Path(root)
    try:
        chosen_because = None
        if model:
            bundle, fmt = read_bundle(model)
            all_flagged = False
        else:
            variant, all_flagged = best_variant(root)
            bundle, fmt = read_bundle(root / export_dir(variant))
            chosen_because = (f"no --model given: {variant}, the best validation {bundle.decision['positive']} AUROC "
                              f"({bundle.manifest['validation']['decision_auroc']:.3f}) "
                              + ("of the exported variants, every one of them flagged" if all_flagged
                                 else "among the exported variants without flags"))
        if fmt == "coreml":
            raise PredictError(f"{bundle.directory / COREML_FILE}: Core ML models predict on macOS only; "
                               "pass the bundle's .keras or .tflite file")
        path = bundle.verified(fmt)
    except BundleError as e:
        raise PredictError(str(e)) from None
    from cxr.report import flag_lines
    common = dict(variant=bundle.variant, targets=bundle.targets, size=bundle.size,
                  decision=bundle.decision["positive"], threshold=bundle.threshold(fmt), rule=bundle.decision_rule,
                  flags=flag_lines(bundle.flags) + ([EVERY_VARIANT_FLAGGED] if all_flagged else []),
                  chosen_because=chosen_because)
    if fmt == "keras":
        import_tensorflow_quietly()
        from cxr.inference import compiled, load_model
        keras_model = load_model(path)
        _check_outputs(path, int(keras_model.output_shape[-1]), bundle)
        return Predictor(f"{bundle.variant} (keras)", run=compiled(keras_model), keras_model=keras_model, **common)
    from cxr.export import TFLiteModel
    runner = TFLiteModel(path)
    _check_outputs(path, int(runner.output["shape"][-1]), bundle)
    return Predictor(f"{bundle.variant} ({path.name})", run=runner.predict, **common)


def _check_outputs(path: Path, outputs: int, bundle) -> None:
    """The manifest names one target per model output, or the findings would be mislabelled."""
    if outputs != len(bundle.targets):
        raise PredictError(f"{path}: the model has {outputs} outputs, its {MANIFEST_FILE} names "
                           f"{len(bundle.targets)} targets; re-export the bundle")


def collect_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and image files found under folders (recursively), in order."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def predict_files(predictor: Predictor, paths: Iterable[Path]) -> Iterator[tuple[Path, dict | None, str | None]]:
    """``(path, result, None)`` per readable image, ``(path, None, reason)`` per unreadable one."""
    for path in paths:
        try:
            pixels = read_image(path)
        except ImageReadError as e:
            yield path, None, str(e)
            continue
        yield path, {"image": str(path), **predictor.predict_pixels(pixels)}, None


def heatmap(predictor: Predictor, path: Path, out_dir: Path) -> Path:
    """The decision's heatmap overlay for one file (Keras models only)."""
    from cxr.gradcam import caption, save_overlay
    predictor.require_gradients()
    small = resize_image(read_image(path), predictor.size)
    cam = predictor.heatmap(small)
    return save_overlay(small, cam, out_dir / f"{path.stem}_heatmap.png",
                        f"{path.name} ({predictor.name})\n{caption(predictor.heatmap_method, cam)}")
