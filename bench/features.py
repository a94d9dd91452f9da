"""What the bottleneck feature cache saves: a frozen-backbone epoch with and without it.

For one backbone variant (default: params.yaml's resnet50 at image.size, random weights, its backbone
frozen for every epoch), on the project's cache and splits: train it for --epochs frozen epochs through
cxr.train.train_model twice, on the full network (each epoch runs the backbone forward over every train
and val image) and on stored features (the head only); then the one-time cost of computing the features
of every cached image (the features stage), and after how many frozen epochs the cache has paid for
itself. Both runs are measured side by side in this process; writes reports/features.json.

    python bench/features.py [--variant resnet50] [--epochs 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="resnet50", help="a network variant of params.yaml with a backbone")
    parser.add_argument("--epochs", type=int, default=2, help="frozen epochs per run")
    parser.add_argument("--out", default=str(ROOT / "reports" / "features.json"))
    args = parser.parse_args()

    os.chdir(ROOT)
    from cxr import compute
    from cxr.params import load_params
    from cxr.paths import CACHE, LABELS, SPLITS
    params = load_params()
    compute.configure(params.compute)
    import keras
    import numpy as np

    from cxr.data.dataset import load_dataset
    from cxr.features import compute_features
    from cxr.train import build_network, set_determinism, train_model

    mp = dataclasses.replace(params.model(args.variant), weights=None, epochs=args.epochs, freeze_epochs=args.epochs)
    size, targets = params.image.size, params.labels.targets
    data = load_dataset(CACHE, LABELS, SPLITS, targets)
    train, val = data.splits["train"], data.splits["val"]

    set_determinism(params.train.seed)
    with tempfile.TemporaryDirectory() as tmp:
        made = compute_features(build_network(mp, size, len(targets), args.variant), data.pixels, Path(tmp) / "f.npy")
        keras.backend.clear_session()
        features = np.load(Path(tmp) / "f.npy", mmap_mode="r")
        runs = {}
        for name, given in (("full_network", None), ("feature_cache", features)):
            result = train_model(data, mp, params.train, size, name=args.variant, verbose=0, features=given)
            runs[name] = {"seconds_per_epoch": round(result.seconds / result.epochs_run, 3),
                          "val_auroc": round(result.best["val_auroc"], 4)}
            keras.backend.clear_session()
    full, cached = runs["full_network"]["seconds_per_epoch"], runs["feature_cache"]["seconds_per_epoch"]
    speedup = full / cached
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
           "variant": args.variant, "family": mp.family, "image_size": size, "batch": params.train.batch_size,
           "train_images": len(train), "val_images": len(val), "frozen_epochs": args.epochs, **runs,
           "speedup_per_frozen_epoch": round(speedup, 1),
           "features_once": {"images": made["images"], "dims": made["dims"], "seconds": made["seconds"],
                             "ms_per_image": made["ms_per_image"]},
           "break_even_frozen_epochs": round(made["seconds"] / max(full - cached, 1e-9), 2)}
    print(f"{mp.family} at {size} px, frozen epoch on {len(train)} train + {len(val)} val images: "
          f"full network {full:.2f} s, feature cache {cached:.3f} s = {speedup:.1f}x faster; features of all "
          f"{made['images']} cached images once: {made['seconds']:.1f} s ({made['ms_per_image']:.1f} ms/image), "
          f"paid back after {out['break_even_frozen_epochs']} frozen epochs")
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
