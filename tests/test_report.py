"""reports/summary.md from metrics: the published per-finding references and the metadata baselines."""
import numpy as np

from cxr.data import FINDINGS
from cxr.evaluate import evaluate_predictions
from cxr.report import PER_FINDING, summary_markdown

DATA = {"source": "sample", "images": 557, "patients": 555, "split": "patient", "test_images": 60, "size": 32}


def _evaluation(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    y = (rng.random((60, 14)) < 0.3).astype(int)
    p = np.clip(y * 0.2 + rng.random((60, 14)) * 0.8, 0, 1)
    return evaluate_predictions(FINDINGS, y, p, np.arange(60), y, p, threshold="fbeta", beta=3, min_positives=5,
                                bootstrap=20, seed=0)["metrics"]


def test_per_finding_table_sets_published_full_data_results_beside_each_variant():
    text = summary_markdown({"cnn": _evaluation(0), "mobilenet": _evaluation(1)}, {}, {}, DATA)
    assert "| finding | positives | cnn | mobilenet | Wang 2017† | CheXNet† |" in text
    assert "| Cardiomegaly |" in text and "| 0.807 | 0.9248 |" in text and "NOT measured here" in text
    assert set(PER_FINDING) == set(FINDINGS)
    # CheXNet's published mean over the 14 findings is 0.841: the table's numbers add up to it.
    assert " | 0.738 | 0.8414 |" in text
    assert "Without the image" not in text   # no metadata baseline in these metrics


def test_metadata_baselines_are_reported_and_the_follow_up_one_marked_unusable():
    evaluation = _evaluation(0)
    baseline = {"auroc": 0.63, "auroc_ci95": {"low": 0.48, "high": 0.77}, "train_rows": 111300,
                "train_patients": 30606}
    evaluation["abnormal"]["baselines"].update(metadata=baseline, metadata_with_follow_up={**baseline, "auroc": 0.6})
    text = summary_markdown({"cnn": evaluation}, {}, {}, DATA)
    assert "111,300 rows of the official metadata" in text and "**0.63 (0.48–0.77)**" in text
    assert "adding the follow-up number 0.60 (0.48–0.77) — a dataset artifact" in text and "not usable" in text
