"""Metric code against hand-computable cases; the threshold comes from validation only."""
import numpy as np
import pytest

from cxr.data.labels import any_probability, decision_for
from cxr.evaluate import (bootstrap_auroc, bootstrap_weights, calibration, choose_threshold, confusion,
                          evaluate_predictions, fbeta, flat_metrics, is_collapsed, mean_auroc, mean_auroc_interval,
                          operating_point, per_class_auroc, prediction_spread, triage_curve, weighted_auroc)
from cxr.gradcam import heat_in_box


def test_auroc_by_hand_and_a_class_without_positives():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    p = np.array([[0.9, 0.3], [0.8, 0.1], [0.4, 0.2], [0.1, 0.5]])
    # class a: positives 0.9, 0.4 vs negatives 0.8, 0.1 -> pairs won: (0.9>0.8, 0.9>0.1, 0.4>0.1) = 3 of 4
    scores = per_class_auroc(y, p, ["a", "b"])
    assert scores == {"a": 0.75, "b": None}
    assert mean_auroc(y, p) == 0.75
    assert per_class_auroc(y, p, ["a", "b"], min_positives=3)["a"] is None


def test_patient_bootstrap_ci_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(60), 3)
    y = rng.integers(0, 2, (180, 1))
    p = np.clip(y * 0.3 + rng.random((180, 1)) * 0.7, 0, 1)
    point = per_class_auroc(y, p, ["x"])["x"]
    [ci] = bootstrap_auroc(y, p, patients, rounds=300, seed=1)
    assert ci["low"] < point < ci["high"] and ci["high"] - ci["low"] < 0.3
    assert bootstrap_auroc(y, p, patients, rounds=300, seed=1) == [ci]
    assert bootstrap_auroc(np.zeros((180, 1)), p, patients, rounds=50, seed=1) == [None]


def test_mean_auroc_interval_brackets_the_mean_over_the_classes_it_counts():
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(80), 2)
    y = rng.integers(0, 2, (160, 3))
    y[:, 2] = 0  # no positives: not counted, as in mean_auroc
    p = np.clip(y * 0.4 + rng.random((160, 3)) * 0.6, 0, 1)
    ci = mean_auroc_interval(y, p, patients, rounds=300, seed=0)
    assert ci["low"] < mean_auroc(y, p) < ci["high"]
    assert mean_auroc_interval(np.zeros((160, 3)), p, patients, rounds=50) is None


def test_collapsed_means_the_outputs_do_not_depend_on_the_image():
    rng = np.random.default_rng(0)
    constant = np.tile(rng.random(14) * 0.3, (87, 1))
    assert prediction_spread(constant) < 1e-12 and is_collapsed(constant)
    assert is_collapsed(constant + rng.normal(0, 1e-6, constant.shape))  # float noise is not signal
    varied = np.clip(constant + rng.normal(0, 0.02, constant.shape), 0.01, 0.99)
    assert not is_collapsed(varied)


def test_bootstrap_resamples_patients_not_images():
    """A patient whose images all agree moves together: one huge patient widens the CI."""
    y = np.array([[1], [0]] * 10 + [[1]] * 40)
    p = np.array([[0.6], [0.4]] * 10 + [[0.35]] * 40)  # 40 positives scored below every negative
    spread = lambda patients: (lambda ci: ci["high"] - ci["low"])(bootstrap_auroc(y, p, patients, 400, 0)[0])
    one_patient_per_image = np.arange(60)
    big_patient = np.concatenate([np.arange(20), np.full(40, 99)])
    assert spread(big_patient) > spread(one_patient_per_image)


def test_weighted_auroc_equals_scikit_learn_with_sample_weights():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 2)  # plenty of ties
    w = rng.integers(0, 4, (5, 300)).astype(float)
    got = weighted_auroc(y, p, w)
    want = [roc_auc_score(y, p, sample_weight=row) for row in w]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isnan(weighted_auroc(np.zeros(10), rng.random(10), np.ones((1, 10))))[0]


def test_decision_score_is_noisy_or_of_sigmoids_and_the_sum_of_softmax_classes():
    p = np.array([[0.5, 0.5], [0.0, 0.0], [1.0, 0.2]])
    np.testing.assert_allclose(any_probability(p), [0.75, 0.0, 1.0])
    np.testing.assert_allclose(any_probability(np.array([[0.3], [0.8]])), [0.3, 0.8])
    softmax = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])   # No Finding, Infiltration, Effusion
    abnormal = decision_for("multiclass", "abnormal", ["No Finding", "Infiltration", "Effusion"])
    assert (abnormal.positive, abnormal.negative, abnormal.columns) == ("abnormal", "normal", (1, 2))
    np.testing.assert_allclose(abnormal.score(softmax), [0.3, 0.9])   # 1 - P(No Finding)
    one_hot = np.array([[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(abnormal.truth(one_hot), [0, 1])
    effusion = decision_for("multiclass", "Effusion", ["No Finding", "Infiltration", "Effusion"])
    assert effusion.negative == "no Effusion"
    np.testing.assert_allclose(effusion.score(softmax), [0.1, 0.6])
    np.testing.assert_array_equal(effusion.truth(one_hot), [0, 1])


def test_confusion_fbeta_and_operating_point_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3])
    assert confusion(y, s, 0.5) == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    assert fbeta(2, 1, 1, beta=1) == pytest.approx(2 / 3)
    assert fbeta(2, 1, 1, beta=3) == pytest.approx(10 * 2 / (10 * 2 + 9 * 1 + 1))
    op = operating_point(y, s, 0.5, beta=3)
    assert op["sensitivity"] == pytest.approx(2 / 3) and op["specificity"] == pytest.approx(2 / 3)


def test_thresholds_youden_fbeta_fixed():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.35, 0.4, 0.3, 0.8, 0.9])
    # Youden J: 0.8 -> 2/3 + 1 - 1 = 0.667; 0.3 -> 1 + 0.5 - 1 = 0.5.
    assert choose_threshold(y, s, "youden") == pytest.approx(0.8)
    # beta=3 prefers recall: F3 at 0.3 = 30/32 = 0.94 (all 3 abnormals, 2 false alarms) > 20/29 at 0.8.
    assert choose_threshold(y, s, "fbeta", beta=3) == pytest.approx(0.3)
    assert choose_threshold(y, s, 0.42) == 0.42


def test_threshold_is_taken_from_validation_data_only():
    rng = np.random.default_rng(0)
    val_y = np.array([[0], [0], [1], [1]])
    val_p = np.array([[0.1], [0.2], [0.7], [0.9]])
    kw = dict(threshold="youden", beta=3.0, min_positives=1)
    results = []
    for _ in range(2):  # two unrelated test sets
        test_y = rng.integers(0, 2, (40, 1))
        test_p = rng.random((40, 1))
        results.append(evaluate_predictions(["abnormal"], test_y, test_p, np.arange(40), val_y, val_p, **kw,
                                            weights=bootstrap_weights(np.arange(40), 20, 0),
                                            val_weights=bootstrap_weights(np.arange(4), 20, 0), prevalence=0.5))
    chosen = [r["metrics"]["abnormal"]["at_threshold"]["threshold"] for r in results]
    assert chosen[0] == chosen[1] == choose_threshold(val_y[:, 0], val_p[:, 0], "youden") == pytest.approx(0.7)


def test_evaluation_reports_rare_classes_instead_of_dropping_them():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 1, 0]] * 5)
    p = np.random.default_rng(1).random((20, 3))
    m = evaluate_predictions(["a", "b", "c"], y, p, np.arange(20), y, p, threshold="fbeta", beta=3.0,
                             min_positives=6, weights=bootstrap_weights(np.arange(20), 30, 0),
                             val_weights=bootstrap_weights(np.arange(20), 30, 1), prevalence=0.5)["metrics"]
    assert m["per_class"]["b"]["positives"] == 5 and "fewer than 6" in m["per_class"]["b"]["status"]
    assert m["mean_auroc_classes"] == 2
    assert m["mean_auroc"] == pytest.approx(np.mean([m["per_class"]["a"]["auroc"], m["per_class"]["c"]["auroc"]]))
    assert "per_class.a.auroc" in flat_metrics(m)


def test_calibration_and_triage_by_hand():
    ece, curve = calibration(np.array([0, 1, 1, 1]), np.array([0.05, 0.95, 0.95, 0.55]), bins=10)
    # bins: 0.05 -> observed 0; 0.95 x2 -> 1; 0.55 -> 1: |0.05|*1/4 + |0.05|*2/4 + |0.45|*1/4
    assert ece == pytest.approx(0.05 / 4 + 0.1 / 4 + 0.45 / 4)
    assert [c["count"] for c in curve] == [1, 1, 2]
    rows = triage_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]), points=11)
    at_half = next(r for r in rows if r["threshold"] == 0.5)
    assert at_half == {"threshold": 0.5, "negatives_skipped": 0.5, "positives_missed": 0.5}


def test_heat_in_box_by_hand():
    cam = np.zeros((64, 64))
    cam[0:16, 0:16] = 1.0   # all heat in the top-left 256x256 of a 1024 image
    assert heat_in_box(cam, (0, 0, 256, 256)) == 1.0
    assert heat_in_box(cam, (0, 0, 128, 256)) == 0.5
    assert heat_in_box(np.zeros((8, 8)), (0, 0, 10, 10)) is None


def test_fbeta_threshold_is_the_brute_force_maximum_lowest_on_ties():
    """precision_recall_curve gives what trying every unique score gives, ties included."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(2, 60))
        y = rng.random(n) < rng.random()
        score = np.round(rng.random(n), int(rng.integers(1, 4)))   # coarse scores: many ties
        for beta in (0.5, 1.0, 3.0):
            f = {float(t): fbeta(**{k: v for k, v in confusion(y, score, t).items() if k != "tn"}, beta=beta)
                 for t in np.unique(score)}
            best = max(f.values())
            assert choose_threshold(y, score, "fbeta", beta) == min(t for t, v in f.items() if v == best)


def test_curve_tables_agree_with_the_metrics_they_plot():
    from sklearn.metrics import auc
    from cxr.evaluate import curve_tables
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (60, 3))
    p = np.clip(y * 0.3 + rng.random((60, 3)) * 0.7, 0, 1)
    result = evaluate_predictions(["a", "b", "c"], y, p, np.arange(60), y, p, threshold="youden", beta=3.0,
                                  min_positives=1, weights=bootstrap_weights(np.arange(60), 20, 0),
                                  val_weights=bootstrap_weights(np.arange(60), 20, 1), prevalence=0.5)
    tables, abnormal = curve_tables(result["curves"]), result["metrics"]["abnormal"]
    assert set(tables) == {"roc", "pr", "calibration", "triage", "confusion"}
    assert auc(tables["roc"]["fpr"], tables["roc"]["tpr"]) == pytest.approx(abnormal["auroc"])
    confusion_counts = tables["confusion"].value_counts().to_dict()
    c = abnormal["at_threshold"]["confusion"]
    assert confusion_counts.get(("abnormal", "abnormal"), 0) == c["tp"]
    assert confusion_counts.get(("normal", "abnormal"), 0) == c["fp"]
    assert len(tables["confusion"]) == 60 and tables["pr"]["recall"].iloc[-1] == 0.0


def test_subgroup_auroc_is_the_auroc_within_the_subgroup_and_its_interval_the_bootstrap_restricted_to_it(
        full_metadata):
    """The decision score here is age itself, on real metadata: its AUROC differs by sex and view."""
    from sklearn.metrics import roc_auc_score
    from cxr.data.labels import multi_hot
    from cxr.data.metadata import AGE_BANDS, subgroups
    from cxr.evaluate import bootstrap_weights, subgroup_aurocs
    rows = full_metadata[full_metadata["Patient ID"] < 1500].dropna(subset=["Patient Age"])
    truth = multi_hot(rows["Finding Labels"])["abnormal"].to_numpy()
    score = rows["Patient Age"].to_numpy()
    weights = bootstrap_weights(rows["Patient ID"].to_numpy(), 200, 0)
    groups = subgroups(rows)
    result = subgroup_aurocs(truth, score, groups, weights,
                             levels={"sex": ["F", "M"], "age": AGE_BANDS, "view": ["PA", "AP", "LL"]})
    for attribute, levels in result.items():
        assert sum(e["images"] for e in levels.values()) == len(rows)
        for level, entry in levels.items():
            mask = groups[attribute] == level
            if not mask.any():   # a level asked for but absent: kept, without a score
                assert (attribute, level, entry) == ("view", "LL", {"images": 0, "positives": 0, "auroc": None,
                                                                    "auroc_ci95": None})
                continue
            assert entry["positives"] == truth[mask].sum()
            assert entry["auroc"] == pytest.approx(roc_auc_score(truth[mask], score[mask]))
            ci = entry["auroc_ci95"]
            assert ci["low"] < entry["auroc"] < ci["high"] and ci["high"] - ci["low"] < 0.25
    assert subgroup_aurocs(truth, score, groups, weights)["sex"].keys() == {"F", "M"}


def test_expert_labels_score_the_model_against_radiologists_and_the_nlp_labels_on_the_same_images(full_metadata):
    """A score equal to the NLP label is perfect against the NLP labels; against the experts it is
    exactly as good as the NLP labels agree with them (real Google 2019 labels, real NIH labels)."""
    from sklearn.metrics import roc_auc_score
    from conftest import BUNDLED
    from cxr.data.labels import multi_hot
    from cxr.data.metadata import EXPERT_FINDINGS, FINDINGS, read_expert_labels
    from cxr.evaluate import bootstrap_weights, expert_label_aurocs
    expert = read_expert_labels(BUNDLED / "meta" / "google2019_nih-chest-xray-labels.csv.gz")
    rows = full_metadata.set_index("Image Index").loc[expert.index[:1500]]
    y = multi_hot(rows["Finding Labels"])[list(FINDINGS)].to_numpy()
    weights = bootstrap_weights(rows["Patient ID"].to_numpy(), 100, 0)
    truth = {f: expert[f].to_numpy()[:1500] for f in EXPERT_FINDINGS}
    result = expert_label_aurocs(truth, EXPERT_FINDINGS, FINDINGS, y, y.astype(float), weights)
    assert result["Fracture"] == {"images": 1500, "expert_positives": int(truth["Fracture"].sum()),
                                  "status": "no NIH finding to compare"}
    nodule = result["Nodule or mass"]
    nlp = y[:, [FINDINGS.index("Nodule"), FINDINGS.index("Mass")]].max(axis=1)
    assert nodule["model_outputs"] == ["Nodule", "Mass"] and nodule["nlp_positives"] == nlp.sum()
    assert nodule["nlp"]["auroc"] == 1.0
    assert nodule["expert"]["auroc"] == pytest.approx(roc_auc_score(truth["Nodule or mass"], nlp))
    assert nodule["nlp_agreement"] == pytest.approx((nlp == truth["Nodule or mass"]).mean())
    assert 0.5 < nodule["expert"]["auroc"] < 0.95   # the NLP labels are a noisy copy of the experts'
    # A binary model of one finding covers only that finding.
    column = y[:, [FINDINGS.index("Pneumothorax")]]
    one = expert_label_aurocs(truth, EXPERT_FINDINGS, ["Pneumothorax"], column, column * 1.0, weights)
    assert one["Pneumothorax"]["status"] == "ok" and one["Nodule or mass"]["status"] == \
        "the model has no output for Nodule / Mass"
    empty = expert_label_aurocs({f: v[:0] for f, v in truth.items()}, EXPERT_FINDINGS, FINDINGS, y[:0], y[:0],
                                weights[:, :0])
    assert {e["status"] for e in empty.values()} == {"no test image has expert labels"}
