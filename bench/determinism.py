"""How far results move with the CPU settings that differ between machines of one kind.

Trains each variant of params.yaml (epochs capped by --epochs) once per setting
below, each in its own process, and compares the trained model with the one
from the pipeline's own settings (params.yaml `compute`): are the weights
bit-identical, how far apart are the validation predictions, and how much do
the validation and test mean AUROC move. Needs `make repro`'s data stages.

    python bench/determinism.py                 # cnn, resnet50, mobilenet; 3 epochs each
    python bench/determinism.py --variants cnn --epochs 15

Settings: `max_cpu_isa` avx / sse41 stand in for CPUs with other vector units
(an AVX-512 machine left at `native` differs from an AVX2 one the same way);
`threads 1` for a machine with another core count; `taskset -c 0` runs the
pipeline's settings on one core; `TF_ENABLE_ONEDNN_OPTS=0` turns TensorFlow's
oneDNN graph rewrites off; `OPENBLAS_CORETYPE` / `OPENBLAS_NUM_THREADS` change
the BLAS kernels and threads of NumPy and scikit-learn (the `linear` fit).
Writes reports/determinism.json (variants measured before are kept, each with
the epochs it was trained for).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> (compute overrides, extra environment, command prefix)
    "pipeline (params.yaml)": ({}, {}, []),
    "max_cpu_isa: avx": ({"max_cpu_isa": "avx"}, {}, []),
    "max_cpu_isa: sse41": ({"max_cpu_isa": "sse41"}, {}, []),
    "threads: 1": ({"threads": 1}, {}, []),
    "taskset -c 0 (one core)": ({}, {}, ["taskset", "-c", "0"]),
    "TF_ENABLE_ONEDNN_OPTS=0": ({}, {"TF_ENABLE_ONEDNN_OPTS": "0"}, []),
    # NumPy / SciPy's OpenBLAS (scikit-learn's fits) picks its kernels by CPU: these stand in for
    # older CPUs, and one thread for another core count.
    "OPENBLAS_CORETYPE=SandyBridge": ({}, {"OPENBLAS_CORETYPE": "SandyBridge"}, []),
    "OPENBLAS_CORETYPE=Prescott": ({}, {"OPENBLAS_CORETYPE": "Prescott"}, []),
    "OPENBLAS_NUM_THREADS=1": ({}, {"OPENBLAS_NUM_THREADS": "1"}, []),
}


def child(overrides: dict, variants: list[str], epochs: int, out: Path) -> None:
    """Train each variant under ``overrides`` and save its predictions."""
    from cxr import compute
    from cxr.params import ModelParams, load_params

    params = load_params(ROOT / "params.yaml")
    compute.configure(dataclasses.replace(params.compute, **overrides))
    import numpy as np

    from cxr import inference, train
    from cxr.data.dataset import load_dataset
    from cxr.evaluate import mean_auroc

    data = load_dataset(ROOT / "data/cache", ROOT / "data/labels.csv", ROOT / "data/splits.csv",
                        params.labels.targets)
    result = {}
    for variant in variants:
        mp = params.model(variant)
        if isinstance(mp, ModelParams):  # a linear variant is fitted in one pass: nothing to cap
            mp = dataclasses.replace(mp, epochs=min(epochs, mp.epochs))
            mp = dataclasses.replace(mp, freeze_epochs=min(mp.freeze_epochs, mp.epochs - 1))
        started = time.perf_counter()
        r = train.train_model(data, mp, params.train, params.image.size, name=variant, verbose=0)
        test_p = inference.predict(r.model, data.images("test"))
        np.savez(out / f"{variant}.npz", val=r.val_predictions, test=test_p)
        weights = hashlib.sha256(b"".join(w.tobytes() for w in r.model.get_weights())).hexdigest()
        result[variant] = {"weights_sha256": weights, "best_epoch": r.best["epoch"],
                           "val_auroc": r.best["val_auroc"], "test_mean_auroc": mean_auroc(data.splits["test"].y, test_p),
                           "seconds": round(time.perf_counter() - started, 1)}
    (out / "result.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(json.loads(args.child), args.variants, args.epochs, Path(args.out))
        return

    import tempfile

    import numpy as np

    from cxr.params import ModelParams, load_params
    models = load_params(ROOT / "params.yaml").models
    variants = args.variants or list(models)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (overrides, env, prefix)) in enumerate(SETTINGS.items()):
            out = Path(tmp) / str(i)
            out.mkdir()
            cmd = [*prefix, sys.executable, __file__, "--child", json.dumps(overrides), "--variants", *variants,
                   "--epochs", str(args.epochs), "--out", str(out)]
            subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env})
            result = json.loads((out / "result.json").read_text())
            for v in variants:
                result[v]["predictions"] = dict(np.load(out / f"{v}.npz"))
            runs[name] = result
            print(f"{name}: done", flush=True)

    reference = runs[next(iter(SETTINGS))]
    # Epochs each variant was trained for (capped by --epochs); None: fitted in one pass (linear).
    report = {"epochs": {v: min(args.epochs, models[v].epochs) if isinstance(models[v], ModelParams) else None
                         for v in variants}, "variants": {}}
    print(f"\n{'setting':<26} {'variant':<10} {'same bits':<9} {'max |Δp| val':>12} {'Δ val AUROC':>12} "
          f"{'Δ test AUROC':>12} {'best ep':>7} {'s':>6}")
    for name, result in runs.items():
        for v in variants:
            r, ref = result[v], reference[v]
            row = {"identical_weights": r["weights_sha256"] == ref["weights_sha256"],
                   "max_abs_diff_val": float(np.max(np.abs(r["predictions"]["val"] - ref["predictions"]["val"]))),
                   "val_auroc": r["val_auroc"], "val_auroc_delta": r["val_auroc"] - ref["val_auroc"],
                   "test_mean_auroc": r["test_mean_auroc"],
                   "test_mean_auroc_delta": r["test_mean_auroc"] - ref["test_mean_auroc"],
                   "best_epoch": r["best_epoch"], "seconds": r["seconds"]}
            report["variants"].setdefault(v, {})[name] = row
            print(f"{name:<26} {v:<10} {str(row['identical_weights']):<9} {row['max_abs_diff_val']:>12.2e} "
                  f"{row['val_auroc_delta']:>+12.4f} {row['test_mean_auroc_delta']:>+12.4f} "
                  f"{row['best_epoch']:>7} {row['seconds']:>6.0f}")
    path = ROOT / "reports" / "determinism.json"
    old = json.loads(path.read_text()) if path.is_file() else {"epochs": {}, "variants": {}}
    # Variants measured before stay; those measured now replace theirs.
    report = {key: {**old[key], **report[key]} for key in ("epochs", "variants")}
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
