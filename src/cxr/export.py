"""Export to TFLite (fp32, fp16, int8) and Core ML, and prove the exports equal the Keras model."""
from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxr.errors import CxrError, first_line
from cxr.outputs import atomic_path

TFLITE_FORMATS = ("fp32", "fp16", "int8")


class ExportError(CxrError):
    """A model that cannot be exported or run as exported."""


# --- TFLite ---

def _saved_model(model, directory: Path) -> Path:
    # model.export + from_saved_model converts ~40% faster than from_keras_model here.
    model.export(str(directory), verbose=False)
    return directory


def _convert(saved: Path, fmt: str, representative: np.ndarray | None) -> tuple[bytes, str]:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if fmt == "fp32":
        return converter.convert(), "float32"
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "fp16":
        converter.target_spec.supported_types = [tf.float16]
        return converter.convert(), "float16 weights"
    # int8: full-integer with a representative set preprocessed exactly as in
    # training (float32 0..255, 1 channel); the usual failure is a set scaled
    # differently, which gives constant outputs.
    def samples():
        for image in representative:
            yield [image[None].astype(np.float32)]

    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return converter.convert(), "full integer (int8 ops, float input/output)"
    except Exception:  # the converter raises many types when an op has no int8 kernel
        fallback = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        fallback.optimizations = [tf.lite.Optimize.DEFAULT]
        return fallback.convert(), "dynamic range (int8 weights; full integer failed)"


def export_tflite(model, out_dir: str | os.PathLike, representative: np.ndarray,
                  formats: Sequence[str] = TFLITE_FORMATS) -> dict[str, dict]:
    """Write ``model_<fmt>.tflite`` for each format; returns ``{fmt: {path, kind}}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    produced = {}
    with tempfile.TemporaryDirectory() as tmp:
        saved = _saved_model(model, Path(tmp) / "saved_model")
        for fmt in formats:
            data, kind = _convert(saved, fmt, representative)
            path = out_dir / f"model_{fmt}.tflite"
            with atomic_path(path) as t:
                t.write_bytes(data)
            produced[fmt] = {"path": str(path), "kind": kind}
    return produced


class TFLiteModel:
    """A ``.tflite`` file run with ai_edge_litert; takes and returns what the Keras model does."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads or os.cpu_count())
        except (ValueError, RuntimeError) as e:
            raise ExportError(f"{self.path}: not a loadable TFLite model ({first_line(e)})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.size = int(self.input["shape"][1])
        self._batch = None

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, self.size, self.size, 1])
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self._batch = batch

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities for ``(n, s, s, 1)`` images in 0..255."""
        out = []
        for start in range(0, len(images), batch_size):
            x = np.asarray(images[start:start + batch_size], dtype=np.float32)
            self._resize(len(x))
            scale, zero = self.input["quantization"]
            if self.input["dtype"] != np.float32:  # a quantized input: map 0..255 onto its integers
                x = np.round(x / scale + zero).astype(self.input["dtype"])
            self.interpreter.set_tensor(self.input["index"], x)
            self.interpreter.invoke()
            y = self.interpreter.get_tensor(self.output["index"])
            scale, zero = self.output["quantization"]
            if self.output["dtype"] != np.float32:
                y = (y.astype(np.float32) - zero) * scale
            out.append(np.array(y, dtype=np.float32))
        return np.concatenate(out)

    def latency_ms(self, images: np.ndarray, repeats: int = 3) -> float:
        """Median milliseconds per image at batch 1 (as on a phone, one image at a time)."""
        self.predict(images[:1], batch_size=1)  # warm-up
        times = []
        for _ in range(repeats):
            for image in images:
                t = time.perf_counter()
                self.predict(image[None], batch_size=1)
                times.append(time.perf_counter() - t)
        return float(np.median(times) * 1000)


def parity(reference: np.ndarray, exported: np.ndarray, y: np.ndarray, patients: np.ndarray,
           targets: Sequence[str], seed: int) -> dict:
    """How far an export's test predictions are from the Keras model's, with the
    export's per-class AUROC and its patient-level bootstrap interval."""
    from cxr.evaluate import BOOTSTRAP_ROUNDS, bootstrap_auroc, per_class_auroc

    ref = per_class_auroc(y, reference, targets)
    got = per_class_auroc(y, exported, targets)
    cis = bootstrap_auroc(y, exported, patients, BOOTSTRAP_ROUNDS, seed)
    deltas = {t: got[t] - ref[t] for t in targets if ref[t] is not None}
    return {"max_abs_diff": float(np.max(np.abs(exported - reference))),
            "auroc": got, "auroc_ci95": {t: ci for t, ci in zip(targets, cis) if got[t] is not None},
            "auroc_delta": deltas,
            "mean_auroc_delta": float(np.mean(list(deltas.values()))) if deltas else None,
            "max_abs_auroc_delta": float(np.max(np.abs(list(deltas.values())))) if deltas else None}


# --- Core ML ---

def export_coreml(model, path: str | os.PathLike, targets: Sequence[str], description: str,
                  class_labels: Sequence[str] | None = None, threshold: float | None = None) -> Path:
    """An ``.mlpackage`` (ML program, iOS 15+) with a grayscale image input named
    ``image`` (0..255, scale 1: the model rescales inside).

    Multi-label: output ``probabilities``, one sigmoid per target, the target
    names in the metadata. With ``class_labels`` a Core ML classifier, outputs
    ``classLabel`` and ``probabilities`` (label -> probability), so Vision and
    Xcode show the labels: one label per softmax output (multiclass; ``classLabel`` is
    the likeliest class), or for a one-output model (binary) its negative and positive
    side. A binary classifier's ``classLabel`` is the bundle's decision: ``probabilities``
    is then the model's (calibrated) output per target, and the classifier's dictionary,
    ``decision``, holds the score re-centred so that 0.5 is ``threshold``
    (``sigmoid(logit(p) - logit(threshold))``), so its likeliest side is the one the
    threshold gives.
    """
    import coremltools as ct
    import tensorflow as tf

    size = int(model.inputs[0].shape[1])
    binary = class_labels is not None and len(class_labels) != model.outputs[0].shape[-1]
    if not binary:
        serve = tf.function(lambda image: model(image, training=False))
    else:
        centre = float(np.log(threshold / (1 - threshold))) if threshold is not None and 0 < threshold < 1 else 0.0

        def serve_two(image):
            p = model(image, training=False)
            q = tf.clip_by_value(p, 1e-7, 1 - 1e-7)
            shifted = tf.sigmoid(tf.math.log(q / (1 - q)) - centre)
            return tf.concat([1.0 - shifted, shifted], axis=1), p
        serve = tf.function(serve_two)
    # A function's outputs are Identity, Identity_1, ... in order: the classifier reads the first.
    classifier = None if class_labels is None else ct.ClassifierConfig(
        list(class_labels), predicted_probabilities_output="Identity" if binary else None)
    # Convert the serving function, not a SavedModel directory (which fails with
    # "Only a single concrete function is supported").
    concrete = serve.get_concrete_function(tf.TensorSpec([1, size, size, 1], tf.float32, name="image"))
    converted = ct.convert(
        [concrete], source="tensorflow", convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS15, classifier_config=classifier,
        inputs=[ct.ImageType(name="image", shape=(1, size, size, 1), scale=1.0,
                             color_layout=ct.colorlayout.GRAYSCALE)],
    )
    # The TF graph's output nodes are anonymous (a classifier's: <label>_probs); name the features.
    spec = converted.get_spec()
    if binary:
        ct.utils.rename_feature(spec, spec.description.predictedProbabilitiesName, "decision")
        raw = next(o.name for o in spec.description.output if o.name not in ("decision", spec.description.predictedFeatureName))
        ct.utils.rename_feature(spec, raw, "probabilities")
    else:
        probabilities = spec.description.predictedProbabilitiesName or spec.description.output[0].name
        ct.utils.rename_feature(spec, probabilities, "probabilities")
    mlmodel = ct.models.MLModel(spec, weights_dir=converted.weights_dir, skip_model_load=True)
    mlmodel.short_description = description
    mlmodel.input_description["image"] = f"Chest X-ray, {size}x{size} grayscale, 0..255"
    if class_labels is None:
        mlmodel.output_description["probabilities"] = "Sigmoid probability per class: " + ", ".join(targets)
    elif binary:
        mlmodel.output_description["probabilities"] = "Calibrated probability of " + ", ".join(targets)
        mlmodel.output_description["decision"] = (f"The score re-centred on the threshold {threshold:.4f}: "
                                                  "0.5 is the threshold (not a probability)")
        mlmodel.output_description["classLabel"] = f"The decision at the threshold {threshold:.4f}"
        mlmodel.user_defined_metadata["class_labels"] = json.dumps(list(class_labels))
        mlmodel.user_defined_metadata["threshold"] = repr(float(threshold))
    else:
        mlmodel.output_description["probabilities"] = "Probability of each class: " + ", ".join(class_labels)
        mlmodel.output_description["classLabel"] = "The likeliest class"
        mlmodel.user_defined_metadata["class_labels"] = json.dumps(list(class_labels))
    mlmodel.user_defined_metadata["classes"] = json.dumps(list(targets))
    mlmodel.user_defined_metadata["input_scale"] = "1.0"
    mlmodel.user_defined_metadata["intended_use"] = "research and triage support; not for diagnosis"
    path = Path(path)
    with atomic_path(path) as tmp:
        mlmodel.save(str(tmp))
        _make_package_deterministic(Path(tmp))
    return path


CONVERSION_DATE_KEY = "com.github.apple.coremltools.conversion_date"


def _make_package_deterministic(package: Path) -> None:
    """Same model, same bytes: coremltools writes the metadata map in hash order,
    stamps the conversion date into it and names the package's items by random
    UUIDs, so a re-export (a fresh clone's ``dvc repro``, or the same one after
    midnight) would change the bundle and ``dvc.lock``. Re-serialize the spec
    without the date, with sorted maps, and derive each item's identifier from its path."""
    from coremltools.proto import Model_pb2

    manifest_file = package / "Manifest.json"
    manifest = json.loads(manifest_file.read_text())
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, item["path"]))
           for old, item in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {ids[old]: item for old, item in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = ids[manifest["rootModelIdentifier"]]
    manifest_file.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
    spec_file = package / "Data" / root["path"]
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_file.read_bytes())
    metadata = spec.description.metadata.userDefined
    if CONVERSION_DATE_KEY in metadata:
        del metadata[CONVERSION_DATE_KEY]
    spec_file.write_bytes(spec.SerializeToString(deterministic=True))


def coreml_spec_summary(path: str | os.PathLike) -> dict:
    """What can be checked of an ``.mlpackage`` without macOS (prediction is macOS-only)."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    image = spec.description.input[0]
    ops = [op.type for fn in spec.mlProgram.functions.values()
           for block in fn.block_specializations.values() for op in block.operations]
    return {
        "input_name": image.name,
        "input_type": image.type.WhichOneof("Type"),
        "color_space": ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.type.imageType.colorSpace),
        "width": int(image.type.imageType.width), "height": int(image.type.imageType.height),
        "outputs": [o.name for o in spec.description.output],
        "threshold": (float(spec.description.metadata.userDefined["threshold"])
                      if "threshold" in spec.description.metadata.userDefined else None),
        "classes": json.loads(spec.description.metadata.userDefined["classes"]),
        "class_labels": (json.loads(spec.description.metadata.userDefined["class_labels"])
                         if spec.description.predictedFeatureName else None),
        "input_scale": float(spec.description.metadata.userDefined["input_scale"]),
        "specification_version": int(spec.specificationVersion),
        "ops": len(ops),
    }


def directory_size_mb(path: str | os.PathLike) -> float:
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6
