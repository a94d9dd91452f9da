"""reports/summary.md from metrics: the published per-finding references and the metadata baselines."""
import numpy as np

from cxr.data import FINDINGS
from cxr.evaluate import bootstrap_weights, evaluate_predictions
from cxr.report import EXPERT_MIN_IMAGES, PER_FINDING, default_variant, summary_markdown

DATA = {"source": "sample", "images": 557, "patients": 555, "split": "patient", "test_images": 60, "size": 32,
        "split_images": {"train": 400, "val": 97, "test": 60}}


def _evaluation(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    y = (rng.random((60, 14)) < 0.3).astype(int)
    p = np.clip(y * 0.2 + rng.random((60, 14)) * 0.8, 0, 1)
    m = evaluate_predictions(FINDINGS, y, p, np.arange(60), y, p, threshold="fbeta", beta=3, min_positives=5,
                             weights=bootstrap_weights(np.arange(60), 20, 0),
                             val_weights=bootstrap_weights(np.arange(60), 20, 1), prevalence=0.46)["metrics"]
    m["abnormal"]["calibration"]["method"] = "temperature"
    return m


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


def _study_row(family: str, val: float, params: dict | None = None) -> dict:
    def s(mean):
        return {"mean": mean, "ci95": {"low": mean - 0.1, "high": mean + 0.1}, "seeds": 3}
    return {"params": params or {"family": family}, "over_seeds": {
        "val_abnormal_auroc": s(val), "test_abnormal_auroc": s(val - 0.05), "val_mean_auroc": s(0.55),
        "seconds": s(100.0)}}


LINEAR = {"family": "linear", "size": 32, "components": 100, "C": 0.01}


def test_seed_study_says_whether_an_image_model_beats_linear_and_which_model_predict_uses():
    trains = {"cnn": {"val_decision_auroc": 0.58, "collapsed": False},
              "linear": {"val_decision_auroc": 0.74, "collapsed": False},
              "mobilenet": {"val_decision_auroc": 0.80, "collapsed": True}}
    study = {"seeds": [42, 1, 2], "images": "bundled sample", "image_size": 32, "variants": {
        "cnn": _study_row("cnn", 0.55, {"family": "cnn", "epochs": 3}),
        "linear": _study_row("linear", 0.73, LINEAR),
        "lin_16_10_c1": _study_row("linear", 0.61, {**LINEAR, "size": 16}),
        "cnn_lr3e4": _study_row("cnn", 0.60)}}
    models = {"cnn": {"family": "cnn", "epochs": 15}, "linear": LINEAR}
    evals = {v: _evaluation(i) for i, v in enumerate(trains)}
    text = summary_markdown(evals, trains, {}, DATA, study, models)
    best, _ = default_variant({v: (e["abnormal"]["val"]["auroc"], e["flags"]) for v, e in evals.items()})
    assert f"Default model of `cxr predict` / `cxr serve`: **{best}**" in text
    assert "| linear | linear | 0.730 (0.63–0.83) | 0.680 (0.58–0.78) | 100 | yes |" in text
    assert "| cnn | cnn | 0.550 (0.45–0.65) |" in text and "**no: measured with other settings** |" in text
    assert "| cnn_lr3e4 | cnn |" in text and "no (a tuning candidate) |" in text
    assert "lin_16_10_c1" not in text and "Not shown: 1 other `linear` settings" in text
    assert "**The best image variant, `cnn_lr3e4` (0.600), does NOT beat `linear` (0.730)" in text

    study["variants"]["cnn_lr3e4"] = _study_row("cnn", 0.75)
    text = summary_markdown(evals, trains, {}, DATA, study, models)
    assert "**The best image variant, `cnn_lr3e4` (0.750), beats `linear` (0.730) on validation" in text


def test_subgroup_and_expert_label_tables_show_each_variants_auroc():
    evaluation = _evaluation(0)
    entry = {"images": 30, "positives": 20, "auroc": 0.61, "auroc_ci95": {"low": 0.4, "high": 0.8}}
    evaluation["abnormal"]["subgroups"] = {   # in the order of a metrics file: keys sorted
        "age": {"40_to_60": {**entry, "auroc": 0.5}, "under_40": {**entry, "images": 0, "positives": 0, "auroc": None,
                                                                  "auroc_ci95": None}},
        "sex": {"F": entry, "M": {**entry, "auroc": 0.7}}}
    evaluation["expert_labels"] = {
        "Fracture": {"images": 27, "expert_positives": 1, "status": "no NIH finding to compare"},
        "Pneumothorax": {"images": 27, "expert_positives": 2, "nlp_positives": 1, "nlp_agreement": 0.857,
                         "expert": entry, "nlp": {**entry, "auroc": 0.9}, "status": "ok"}}
    text = summary_markdown({"cnn": evaluation}, {}, {}, DATA)
    assert ("| variant | F (30 img, 20 pos) | M (30 img, 20 pos) | age < 40 (0 img, 0 pos) | "
            "age 40–60 (30 img, 20 pos) |") in text
    assert "| cnn | 0.61 (0.40–0.80) | 0.70 (0.40–0.80) | n/a | 0.50 (0.40–0.80) |" in text
    assert "![age and sex per split](data/age_sex.png)" in text
    assert "| Fracture | 27 | 1 | n/a | n/a | no NIH finding to compare |  |" in text
    assert "| Pneumothorax | 27 | 2 | 1 | 0.86 | 0.61 (0.40–0.80) | 0.90 (0.40–0.80) |" in text
    assert "On the 27 test images that have both" in text
    for f in evaluation["expert_labels"].values():   # below the minimum the section says so, and nothing more
        f["images"] = EXPERT_MIN_IMAGES - 1
    text = summary_markdown({"cnn": evaluation}, {}, {}, DATA)
    assert f"{EXPERT_MIN_IMAGES - 1} test image(s) have them, fewer than {EXPERT_MIN_IMAGES}; not reported" in text
    assert f"| Pneumothorax | {EXPERT_MIN_IMAGES - 1} | 2 |" not in text and "Expert labels (Google 2019, radiologist" not in text
