"""export@<variant>: TFLite fp32/fp16/int8 and Core ML, with parity against Keras on the test split."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from cxr import compute  # noqa: E402
from cxr.errors import run_command  # noqa: E402
from cxr.outputs import atomic_path, write_json  # noqa: E402
from cxr.params import load_variant  # noqa: E402
from cxr.paths import CACHE, LABELS, SPLITS, export_dir, model_file, stage_metrics, timings  # noqa: E402



def main() -> None:
    variant, params = load_variant(description=__doc__)
    xp = params.export
    compute.configure(params.compute)

    from cxr import export
    from cxr.data.dataset import load_dataset
    from cxr.inference import load_model, predict

    model = load_model(model_file(variant))
    data = load_dataset(CACHE, LABELS, SPLITS, params.labels.targets)
    train, test = data.splits["train"], data.splits["test"]
    rng = np.random.default_rng(xp.seed)
    pick = np.sort(rng.choice(len(train), size=min(xp.representative_images, len(train)), replace=False))
    representative = data.pixels[train.rows[pick]][..., None]
    test_images = data.images("test")
    reference = predict(model, test_images)

    report, latency = {"test_images": len(test), "tflite": {}}, {}
    out = export_dir(variant)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        produced = export.export_tflite(model, tmp, representative, xp.tflite)
        for fmt, info in produced.items():
            runner = export.TFLiteModel(info["path"], threads=params.compute.threads)
            got = runner.predict(test_images)
            report["tflite"][fmt] = {
                "kind": info["kind"], "size_mb": round(export.directory_size_mb(info["path"]), 3),
                **export.parity(reference, got, test.y, test.patients, data.targets, xp.seed)}
            latency[fmt] = {"ms_per_image": round(runner.latency_ms(test_images[: xp.latency_images]), 3)}
        if xp.coreml:
            description = f"cxr-pipeline {variant}: chest X-ray findings ({params.labels.task})"
            path = export.export_coreml(model, tmp / "model.mlpackage", data.targets, description)
            report["coreml"] = {"size_mb": round(export.directory_size_mb(path), 3),
                                "spec": export.coreml_spec_summary(path),
                                "note": "Core ML prediction runs on macOS only; the spec is checked here"}
    if "fp32" in report["tflite"]:
        base = report["tflite"]["fp32"]["size_mb"]
        for m in report["tflite"].values():
            m["size_vs_fp32"] = round(m["size_mb"] / base, 3)
    write_json(stage_metrics("export", variant), report)
    # Latency is a fact about this machine, not a result: kept out of `dvc metrics`.
    write_json(timings("export", variant), latency)
    print(f"export@{variant}: " + ", ".join(
        f"{fmt} {m['size_mb']:.2f} MB {latency[fmt]['ms_per_image']:.1f} ms/img max|Δ| {m['max_abs_diff']:.2g}"
        for fmt, m in report["tflite"].items()))


if __name__ == "__main__":
    run_command(main, "export")
