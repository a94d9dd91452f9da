"""Which `evaluate.threshold` rule to default to: each rule's operating point on the validation
split (never test), per variant of the workspace's trained models. Needs a finished `dvc repro`.

    python bench/operating_points.py       # prints a table; writes reports/operating_points.json
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxr.data.dataset import load_dataset  # noqa: E402
from cxr.evaluate import bootstrap_weights, operating_point_with_intervals  # noqa: E402
from cxr.inference import load_model, predict  # noqa: E402
from cxr.outputs import write_json  # noqa: E402
from cxr.params import load_params  # noqa: E402
from cxr.paths import CACHE, LABELS, SPLITS, model_file  # noqa: E402

RULES = ("youden", "fbeta", {"sensitivity": 0.90}, {"sensitivity": 0.95}, {"specificity": 0.90})


def main() -> None:
    params = load_params()
    rule = params.labels.decision
    data = load_dataset(CACHE, LABELS, SPLITS, params.labels.targets)
    val = data.splits["val"]
    weights = bootstrap_weights(val.patients, params.evaluate.bootstrap, params.evaluate.seed)
    out = {}
    for variant in params.models:
        score = rule.score(predict(load_model(model_file(variant)), data.images("val")))
        truth = rule.truth(val.y)
        out[variant] = {}
        for method in RULES:
            point = operating_point_with_intervals(truth, score, truth, score, method, params.evaluate.beta,
                                                   weights, weights, 0.46)
            v = point["val"]
            out[variant][point["threshold_method"]] = {k: v[k] for k in ("threshold", "sensitivity", "specificity")} | {
                "specificity_ci95": v["specificity_ci95"]}
            ci = v["specificity_ci95"]
            print(f"{variant:10s} {point['threshold_method']:20s} threshold {v['threshold']:.3f}  val sensitivity "
                  f"{v['sensitivity']:.3f}  specificity {v['specificity']:.3f} ({ci['low']:.2f}-{ci['high']:.2f})")
    write_json("reports/operating_points.json", out)


if __name__ == "__main__":
    main()
