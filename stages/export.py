"""export@<variant>: the model bundle (Keras, TFLite fp32/fp16/int8, Core ML, manifest.json),
with parity against Keras on the test split and a threshold per format chosen on val."""
import dataclasses
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from cxr import compute, tracking  # noqa: E402
from cxr.errors import run_stage  # noqa: E402
from cxr.outputs import atomic_path, file_sha256, write_json  # noqa: E402
from cxr.params import load_variant  # noqa: E402
from cxr.paths import (CACHE, LABELS, MODEL_INFO, SPLITS, export_dir, model_dir, model_file,  # noqa: E402
                       stage_metrics, timings)


def main() -> None:
    variant, params = load_variant(description=__doc__)
    xp, ep = params.export, params.evaluate
    uri = tracking.tracking_uri()
    tracking.check_tracking_uri(uri)
    compute.configure(params.compute)

    from cxr import bundle, export
    from cxr.data.dataset import load_dataset
    from cxr.evaluate import choose_threshold, flat_metrics, operating_point, threshold_name
    from cxr.report import model_card
    from cxr.inference import load_model, predict

    model = load_model(model_file(variant))
    info = json.loads(Path(model_dir(variant), MODEL_INFO).read_text())
    evaluation = json.loads(Path(stage_metrics("eval", variant)).read_text())   # flags and figures for the card
    data = load_dataset(CACHE, LABELS, SPLITS, params.labels.targets)
    train, val, test = data.splits["train"], data.splits["val"], data.splits["test"]
    rng = np.random.default_rng(xp.seed)
    pick = np.sort(rng.choice(len(train), size=min(xp.representative_images, len(train)), replace=False))
    representative = data.pixels[train.rows[pick]][..., None]
    test_images, val_images = data.images("test"), data.images("val")
    rule = params.labels.decision

    def decision(val_p: np.ndarray, test_p: np.ndarray) -> dict:
        """This format's threshold, chosen on val with its own outputs, and where it lands on test."""
        t = choose_threshold(rule.truth(val.y), rule.score(val_p), ep.threshold, ep.beta)
        return {"threshold": t, "test_at_threshold": operating_point(rule.truth(test.y), rule.score(test_p),
                                                                      t, ep.beta)}

    reference = predict(model, test_images)
    report = {"test_images": len(test), "keras": decision(predict(model, val_images), reference), "tflite": {}}
    formats = {"keras": {"file": bundle.KERAS_FILE, "threshold": report["keras"]["threshold"]}}
    latency = {}
    out = export_dir(variant)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        shutil.copyfile(model_file(variant), tmp / bundle.KERAS_FILE)
        produced = export.export_tflite(model, tmp, representative, xp.tflite)
        for fmt, made in produced.items():
            runner = export.TFLiteModel(made["path"], threads=params.compute.threads)
            got = runner.predict(test_images)
            chosen = decision(runner.predict(val_images), got)
            report["tflite"][fmt] = {
                "kind": made["kind"], "size_mb": round(export.directory_size_mb(made["path"]), 3),
                **export.parity(reference, got, test.y, test.patients, data.targets, xp.seed), **chosen}
            formats[f"tflite_{fmt}"] = {"file": bundle.tflite_file(fmt), "kind": made["kind"],
                                        "threshold": chosen["threshold"]}
            latency[fmt] = {"ms_per_image": round(runner.latency_ms(test_images[: xp.latency_images]), 3)}
        if xp.coreml:
            description = f"cxr-pipeline {variant}: chest X-ray, {rule.positive} or {rule.negative}"
            # A classifier where one class per image is the answer: the binary task's two sides, or the classes.
            labels = {"binary": [rule.negative, rule.positive], "multiclass": list(data.targets)}.get(params.labels.task)
            path = export.export_coreml(model, tmp / bundle.COREML_FILE, data.targets, description, labels,
                                        report["keras"]["threshold"])
            report["coreml"] = {"size_mb": round(export.directory_size_mb(path), 3),
                                "spec": export.coreml_spec_summary(path),
                                "note": "Core ML prediction runs on macOS only; the spec is checked here"}
            formats["coreml"] = {"file": bundle.COREML_FILE, "threshold": report["keras"]["threshold"],
                                 "threshold_source": "the Keras model's outputs: Core ML predicts on macOS only"}
        source = {"data": params.data.source, "split": dataclasses.asdict(params.split),
                  "images": {"train": len(train), "val": len(val), "test": len(test)},
                  "splits_sha256": file_sha256([SPLITS])}
        manifest = bundle.describe(variant, info["family"], params.labels.task, list(data.targets), info["size"],
                                   rule, threshold_name(ep.threshold), ep.beta, formats, source,
                                   info["calibration"], evaluation)
        (tmp / bundle.MODEL_CARD_FILE).write_text(model_card(variant, evaluation, source))
        bundle.write_manifest(tmp, manifest)
    if "fp32" in report["tflite"]:
        base = report["tflite"]["fp32"]["size_mb"]
        for m in report["tflite"].values():
            m["size_vs_fp32"] = round(m["size_mb"] / base, 3)
    write_json(stage_metrics("export", variant), report)
    # Latency is a fact about this machine, not a result: kept out of `dvc metrics`.
    write_json(timings("export", variant), latency)
    model_sha = file_sha256([model_file(variant)])
    tracking.log_model_stage("export", variant, model_sha, flat_metrics(report), dataclasses.asdict(xp),
                             artifacts=[out, f"{out}/{bundle.MODEL_CARD_FILE}"], uri=uri)
    tracking.register_model(variant, model_file(variant), model_sha,
                            tracking.lock_tags(f"train@{variant}", model_file(variant)), uri)
    print(f"export@{variant}: " + ", ".join(
        f"{fmt} {m['size_mb']:.2f} MB {latency[fmt]['ms_per_image']:.1f} ms/img max|Δ| {m['max_abs_diff']:.2g} "
        f"threshold {m['threshold']:.3f}" for fmt, m in report["tflite"].items()))


if __name__ == "__main__":
    run_stage(main, "export")
