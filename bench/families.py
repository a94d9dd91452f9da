"""What a backbone sweep costs: training and inference time per registered network family on this CPU.

For each family: the model params.yaml's sweep recipe builds (recipes/sweep.yaml, random weights),
at image.size, batch 16, real X-rays from the bundled sample; median time of a training step and
of a forward pass after warm-up, per image; then seconds per epoch on the bundled sample's train
split and the whole sweep's training time at the recipe's epochs. Prints a table and writes
reports/families.json. Figures of this machine, not assertions.

    python bench/families.py [--steps 5] [--families cnn,mobilenet]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per family (after 2 warm-up steps)")
    parser.add_argument("--families", help="comma-separated families instead of every one")
    parser.add_argument("--out", default=str(ROOT / "reports" / "families.json"))
    args = parser.parse_args()

    from cxr import compute
    import yaml

    from cxr.params import parse_params
    from cxr.paths import stage_metrics
    from cxr.recipes import SWEEP, SWEEP_VARIANT, apply_recipe, load_recipe, sweep_recipes
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = parse_params(raw)
    compute.configure(params.compute)
    import numpy as np
    import keras

    from cxr.data.images import read_image, resize_image
    from cxr.train import build_network
    size, batch, outputs = params.image.size, 16, len(params.labels.targets)
    recipes, too_small = sweep_recipes(load_recipe(SWEEP, ROOT), size)
    if args.families:
        recipes = {f: recipes[f] for f in args.families.split(",")}
    images = sorted((ROOT / "data" / "sample" / "images").glob("*.png"))[:batch]
    x = np.stack([resize_image(read_image(p), size) for p in images])[..., None].astype("float32")
    y = np.zeros((batch, outputs), "float32")
    y[np.arange(batch), np.arange(batch) % outputs] = 1
    # The train split the default run trains on (committed with the split stage's metrics).
    train_images = json.loads((ROOT / stage_metrics("split")).read_text())["train"]["images"]

    rows = {}
    for family, recipe in recipes.items():
        entry = parse_params(apply_recipe(raw, recipe)).models[SWEEP_VARIANT]
        keras.utils.set_random_seed(0)
        model = build_network(entry, size, outputs, family)
        model.compile(keras.optimizers.Adam(entry.learning_rate), "binary_crossentropy")

        def timed(fn):
            for _ in range(2):
                fn()
            times = []
            for _ in range(args.steps):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return statistics.median(times) / batch * 1000

        train_ms = timed(lambda: model.train_on_batch(x, y))
        infer_ms = timed(lambda: model(x, training=False).numpy())
        epoch_s = train_ms * train_images / 1000
        rows[family] = {"weights_millions": round(model.count_params() / 1e6, 2), "train_ms_per_image": round(train_ms, 1),
                        "infer_ms_per_image": round(infer_ms, 1), "epoch_seconds_on_sample": round(epoch_s, 1),
                        "sweep_training_seconds": round(epoch_s * entry.epochs, 1)}
        print(f"{family:<15} {rows[family]['weights_millions']:>6} M  train {train_ms:7.1f} ms/img  "
              f"infer {infer_ms:6.1f} ms/img  epoch on the sample {epoch_s:6.1f} s", flush=True)
        keras.backend.clear_session()
    total = sum(r["sweep_training_seconds"] for r in rows.values())
    print(f"whole sweep at {size} px: ~{total / 60:.0f} min of training on the sample "
          f"(plus ~1 min per family for evaluate and export); left out: {', '.join(too_small) or 'none'}")
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
           "image_size": size, "batch": batch, "train_images": train_images, "families": rows, "left_out_too_small": too_small,
           "sweep_training_seconds": round(total, 1)}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
