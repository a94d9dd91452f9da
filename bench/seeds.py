"""Every variant against `linear`, over several patient splits of the bundled data.

For each split seed: the patient split the split stage makes (params.yaml
`split`, that seed), every variant of params.yaml plus the candidates of
--candidates (extra `models:` entries, e.g. a tuned cnn or another linear
size; a candidate's optional `train:` mapping overrides params.yaml's `train`
for it alone, e.g. `train: {augment: {rotation: 0}}`) trained or fitted on
its train split, then scored on val and test:
abnormal-vs-normal AUROC with its patient-bootstrap 95% CI, mean AUROC over
the findings, seconds to train. Prints one table and writes
reports/seeds.json: per variant and seed, and over the seeds their mean
with a 95% t-interval. Choose on val; test is reported, never chosen on.
Needs `make repro`'s data stages (the resize cache does not depend on the split).

    python bench/seeds.py                                  # params.yaml variants, seeds 42 1 2
    python bench/seeds.py --candidates bench/candidates.yaml --only lin_16_50_c01
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def over_seeds(values: list[float]) -> dict:
    """Mean and 95% t-interval of one figure over the seeds."""
    import numpy as np
    from scipy import stats

    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if len(v) < 2:
        return {"mean": float(v.mean()) if len(v) else None, "ci95": None, "seeds": len(v)}
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return {"mean": float(v.mean()), "ci95": {"low": float(v.mean() - half), "high": float(v.mean() + half)},
            "seeds": len(v)}


def score(y, p, patients, seed: int) -> dict:
    from cxr.evaluate import decision_auroc, mean_auroc

    return {"abnormal": decision_auroc(y, p, patients, seed=seed), "mean_auroc": mean_auroc(y, p)}


def with_train_overrides(raw: dict, overrides: dict):
    """params.yaml's ``train`` (TrainParams) with ``overrides`` merged in (nested sections too), validated."""
    import copy

    from cxr.params import parse_params

    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        raw["train"][key] = {**raw["train"][key], **value} if isinstance(value, dict) else value
    return parse_params(raw).train


def run(params, seeds: list[int], variants: list[str], train_for: dict) -> dict:
    import pandas as pd

    from cxr import compute
    compute.configure(params.compute)
    import keras
    from cxr import train
    from cxr.data.dataset import load_dataset
    from cxr.data.split import patient_split
    from cxr.inference import predict

    table = pd.read_csv(ROOT / "data/labels.csv")
    results: dict = {v: {} for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            split = patient_split(table, params.split.test_size, params.split.val_size, seed)
            splits = Path(tmp) / f"splits_{seed}.csv"
            pd.DataFrame({"Image Index": table["Image Index"], "Patient ID": table["Patient ID"],
                          "split": split}).to_csv(splits, index=False)
            data = load_dataset(ROOT / "data/cache", ROOT / "data/labels.csv", splits, params.labels.targets)
            val, test = data.splits["val"], data.splits["test"]
            for variant in variants:
                keras.backend.clear_session()
                r = train.train_model(data, params.model(variant), train_for.get(variant, params.train),
                                      params.image.size,
                                      name=variant, verbose=0)
                test_p = predict(r.model, data.images("test"))
                row = {"seconds": round(r.seconds, 1), "epochs_run": r.epochs_run,
                       "val": score(val.y, r.val_predictions, val.patients, seed),
                       "test": score(test.y, test_p, test.patients, seed)}
                results[variant][str(seed)] = row
                print(f"seed {seed} {variant:>18}: val abnormal {row['val']['abnormal']['auroc']:.3f}, "
                      f"test abnormal {row['test']['abnormal']['auroc']:.3f}, {row['seconds']} s", flush=True)
    for variant, rows in results.items():
        runs = [rows[str(s)] for s in seeds]
        rows["over_seeds"] = {
            "val_abnormal_auroc": over_seeds([r["val"]["abnormal"]["auroc"] for r in runs]),
            "test_abnormal_auroc": over_seeds([r["test"]["abnormal"]["auroc"] for r in runs]),
            "val_mean_auroc": over_seeds([r["val"]["mean_auroc"] for r in runs]),
            "seconds": over_seeds([r["seconds"] for r in runs]),
        }
    return results


def _interval(s: dict) -> str:
    ci = s["ci95"]
    return f"{s['mean']:.3f} ({ci['low']:.2f}-{ci['high']:.2f})" if ci else f"{s['mean']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--candidates", help="YAML mapping of extra variant names to models: entries")
    parser.add_argument("--only", nargs="+", help="variants to run (default: all)")
    parser.add_argument("--out", default=str(ROOT / "reports/seeds.json"))
    args = parser.parse_args()

    from cxr.outputs import write_json
    from cxr.params import parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    train_overrides = {}
    if args.candidates:
        candidates = yaml.safe_load(Path(args.candidates).read_text())
        train_overrides = {name: c.pop("train") for name, c in candidates.items() if "train" in c}
        raw["models"].update(candidates)
    params = parse_params(raw)
    variants = args.only or list(params.models)
    train_for = {v: with_train_overrides(raw, o) for v, o in train_overrides.items()}
    results = run(params, args.seeds, variants, train_for)
    measured = {v: {"params": raw["models"][v], **({"train": train_overrides[v]} if v in train_overrides else {}),
                    **results[v]} for v in variants}
    # Variants measured earlier on the same seeds and image size are kept beside these.
    old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    kept = old.get("variants", {}) if (old.get("seeds"), old.get("image_size")) == (args.seeds, params.image.size) \
        else {}
    report = {"seeds": args.seeds, "image_size": params.image.size, "images": "bundled sample",
              "variants": {**kept, **measured}}
    write_json(args.out, report)
    print(f"\n{'variant':>18}  val abnormal AUROC   test abnormal AUROC  val mean AUROC  s/seed "
          f"(mean over seeds {args.seeds}, 95% t-interval)")
    for v in sorted(variants, key=lambda v: -results[v]["over_seeds"]["val_abnormal_auroc"]["mean"]):
        s = results[v]["over_seeds"]
        print(f"{v:>18}  {_interval(s['val_abnormal_auroc']):>19}  {_interval(s['test_abnormal_auroc']):>19}  "
              f"{s['val_mean_auroc']['mean']:>14.3f}  {s['seconds']['mean']:>6.0f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
