"""Which `train.calibration` to default to: temperature against Platt scaling (and none), each fitted
on half of the validation patients and scored on the other half, over seeded halvings (test never
read). Needs a finished `dvc repro`.

    python bench/calibration.py [--halvings 20]   # prints a table; writes reports/calibration.json
"""
import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from cxr import calibrate  # noqa: E402
from cxr.data.dataset import load_dataset  # noqa: E402
from cxr.evaluate import calibration, crossentropy  # noqa: E402
from cxr.inference import load_model, predict  # noqa: E402
from cxr.outputs import write_json  # noqa: E402
from cxr.params import load_params  # noqa: E402
from cxr.paths import CACHE, LABELS, MODEL_INFO, SPLITS, model_dir, model_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--halvings", type=int, default=20)
    args = parser.parse_args()
    params = load_params()
    rule, exclusive = params.labels.decision, params.labels.exclusive
    data = load_dataset(CACHE, LABELS, SPLITS, params.labels.targets)
    val = data.splits["val"]
    patients = np.unique(val.patients)
    out = {}
    for variant in params.models:
        folded = calibrate.Calibration.from_dict(json.loads(Path(model_dir(variant), MODEL_INFO).read_text())["calibration"])
        raw = calibrate.invert(predict(load_model(model_file(variant)), data.images("val")), folded)
        scores = {m: {"nll": [], "decision_ece": []} for m in calibrate.METHODS}
        for seed in range(args.halvings):
            fit_patients = np.random.default_rng(seed).permutation(patients)[: len(patients) // 2]
            fit = np.isin(val.patients, fit_patients)
            for method in calibrate.METHODS:
                mapped = calibrate.apply(raw[~fit], calibrate.fit(val.y[fit], raw[fit], method, exclusive))
                scores[method]["nll"].append(crossentropy(val.y[~fit], mapped, exclusive))
                scores[method]["decision_ece"].append(calibration(rule.truth(val.y[~fit]), rule.score(mapped))[0])
        out[variant] = {m: {k: float(np.mean(v)) for k, v in s.items()} for m, s in scores.items()}
        for m, s in out[variant].items():
            print(f"{variant:10s} {m:12s} held-out val cross-entropy {s['nll']:.4f}  decision ECE {s['decision_ece']:.4f}")
    write_json("reports/calibration.json", {"halvings": args.halvings, "variants": out})


if __name__ == "__main__":
    main()
