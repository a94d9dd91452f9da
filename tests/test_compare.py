"""Judging a metric change against the base's interval, on the key layout the stages write."""
from cxr.compare import CHANGED, NOT_JUDGED, WITHIN_NOISE, MetricChange, _band

# Flattened as `dvc metrics diff --json` gives a base's figures.
BASE = {"per_class.Edema.auroc": 0.61, "per_class.Edema.auroc_ci95.low": 0.40,
        "per_class.Edema.auroc_ci95.high": 0.79, "mean_auroc": 0.55, "mean_auroc_ci95.low": 0.50,
        "mean_auroc_ci95.high": 0.60, "tflite.fp16.auroc.Edema": 0.6, "tflite.fp16.auroc_ci95.Edema.low": 0.41,
        "tflite.fp16.auroc_ci95.Edema.high": 0.8, "abnormal.at_threshold.threshold": 0.7}


def test_each_figure_finds_its_own_interval():
    assert _band("per_class.Edema.auroc", BASE) == (0.40, 0.79)
    assert _band("mean_auroc", BASE) == (0.50, 0.60)
    assert _band("tflite.fp16.auroc.Edema", BASE) == (0.41, 0.8)
    assert _band("abnormal.at_threshold.threshold", BASE) is None


def test_verdicts():
    def change(key, old, new):
        return MetricChange("metrics/eval/cnn.json", key, old, new, _band(key, BASE)).verdict

    assert change("mean_auroc", 0.55, 0.59) == WITHIN_NOISE
    assert change("mean_auroc", 0.55, 0.61) == CHANGED
    assert change("tflite.fp16.auroc.Edema", 0.6, 0.3) == CHANGED
    assert change("abnormal.at_threshold.threshold", 0.7, 0.2) == NOT_JUDGED
    assert change("collapsed", False, True) == CHANGED
    assert change("collapsed", None, False) == NOT_JUDGED  # a figure the base did not have
