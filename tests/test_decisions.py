"""Operating points a clinician can act on: targets, intervals, flags, calibration, verdicts."""
import numpy as np
import pytest

from cxr import calibrate
from cxr.evaluate import (bootstrap_weights, calibration, choose_threshold, choose_thresholds, confusion,
                          decision_flags, evaluate_predictions, is_collapsed, operating_point,
                          paired_auroc_difference, per_class_auroc, prediction_spread, specificity_at_sensitivity)
from cxr.report import default_variant, model_card, summary_markdown


def _rates(y, s, t):
    c = confusion(y, s, t)
    return c["tp"] / (c["tp"] + c["fn"]), c["tn"] / (c["tn"] + c["fp"])


def test_sensitivity_and_specificity_targets_are_the_brute_force_extremes():
    """{sensitivity: x}: the highest score whose sensitivity reaches x; {specificity: x}: the lowest
    score whose specificity reaches x; tried against every unique score, ties included."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(4, 80))
        y = rng.random(n) < 0.6
        y[:2] = [True, False]
        s = np.round(rng.random(n), int(rng.integers(1, 3)))
        for target in (0.5, 0.9, 0.95, 1.0):
            by_sens = [t for t in np.unique(s) if _rates(y, s, t)[0] >= target]
            assert choose_threshold(y, s, {"sensitivity": target}) == max(by_sens)
            by_spec = [t for t in np.unique(s) if _rates(y, s, t)[1] >= target]
            got = choose_threshold(y, s, {"specificity": target})
            if by_spec:
                assert got == min(by_spec)
            else:   # not even the top score keeps it: flag nothing
                assert got > s.max() and _rates(y, s, got)[1] == 1.0


def test_a_weighted_round_chooses_what_the_resampled_data_would():
    rng = np.random.default_rng(1)
    y = rng.random(60) < 0.5
    s = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    weights = bootstrap_weights(np.arange(60), 25, 3)
    for method in ("youden", "fbeta", {"sensitivity": 0.9}, {"specificity": 0.8}):
        rounds = choose_thresholds(y, s, method, 3.0, weights)
        for w, t in zip(weights.astype(int), rounds):
            assert t == choose_threshold(np.repeat(y, w), np.repeat(s, w), method, 3.0)


def test_operating_point_intervals_ppv_npv_and_the_prevalence_shift():
    rng = np.random.default_rng(2)
    y = rng.random(300) < 0.8   # an enriched split
    s = np.clip(rng.normal(0.4 + 0.3 * y, 0.2), 0, 1)
    op = operating_point(y, s, 0.5, 3.0, bootstrap_weights(np.arange(300), 400, 0), prevalence=0.46)
    c = op["confusion"]
    assert op["ppv"] == pytest.approx(c["tp"] / (c["tp"] + c["fp"]))
    assert op["npv"] == pytest.approx(c["tn"] / (c["tn"] + c["fn"]))
    sens, spec = op["sensitivity"], op["specificity"]
    assert op["ppv_at_prevalence"] == pytest.approx(sens * 0.46 / (sens * 0.46 + (1 - spec) * 0.54))
    assert op["ppv_at_prevalence"] < op["ppv"] and op["npv_at_prevalence"] > op["npv"]   # fewer positives
    for key in ("sensitivity", "specificity", "fbeta", "ppv", "npv", "ppv_at_prevalence", "npv_at_prevalence"):
        ci = op[f"{key}_ci95"]
        assert ci["low"] < op[key] < ci["high"], key


def test_specificity_at_sensitivity_reads_the_roc_curve_and_counts_per_thousand():
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.5
    s = np.clip(rng.normal(0.4 + 0.25 * y, 0.15), 0, 1)
    out = specificity_at_sensitivity(y, s, bootstrap_weights(np.arange(400), 200, 0), 0.46)
    specs = [out[k]["specificity"] for k in ("0.90", "0.95", "0.99")]
    assert specs[0] > specs[1] > specs[2]   # more sensitivity costs specificity
    r = out["0.95"]
    assert r["sensitivity"] >= 0.95 and _rates(y, s, r["threshold"]) == (r["sensitivity"], r["specificity"])
    assert r["per_1000"]["normal_set_aside"] == pytest.approx(round(1000 * r["specificity"] * 0.54, 1))
    assert r["per_1000"]["abnormal_missed"] <= r["per_1000"]["abnormal_missed_at_most"] == pytest.approx(23.0)


def _evaluate(val_y, val_p, test_y, test_p, threshold):
    return evaluate_predictions(["abnormal"], test_y[:, None], test_p[:, None], np.arange(len(test_y)),
                                val_y[:, None], val_p[:, None], threshold=threshold, beta=3.0, min_positives=1,
                                weights=bootstrap_weights(np.arange(len(test_y)), 300, 0),
                                val_weights=bootstrap_weights(np.arange(len(val_y)), 300, 1), prevalence=0.46)


def test_a_flag_everything_operating_point_and_a_chance_model_are_flagged_a_good_one_is_not():
    rng = np.random.default_rng(4)
    y_val, y_test = rng.random(200) < 0.8, rng.random(200) < 0.8
    good = [np.clip(rng.normal(0.35 + 0.3 * y, 0.12), 0, 1) for y in (y_val, y_test)]
    m = _evaluate(y_val, good[0], y_test, good[1], {"sensitivity": 0.9})["metrics"]
    assert m["flags"] == []
    flag_all = _evaluate(y_val, good[0], y_test, good[1], 0.0)["metrics"]
    assert flag_all["abnormal"]["at_threshold"]["specificity"] == 0.0
    assert {(f["flag"], f["split"]) for f in flag_all["flags"]} == {("trivial_operating_point", "val"),
                                                                   ("trivial_operating_point", "test")}
    noise = [rng.random(200) for _ in range(2)]
    chance = _evaluate(y_val, noise[0], y_test, noise[1], {"sensitivity": 0.9})["metrics"]
    assert "auroc_not_above_chance" in {f["flag"] for f in chance["flags"]}


def test_the_collapse_rule_catches_the_ios_app_spread_and_spares_healthy_variants():
    """Measured on the bundled sample: ios_app 0.005 (near-constant); the default variants 0.29-1.41."""
    rng = np.random.default_rng(5)
    for spread, collapsed in ((0.005, True), (0.29, False), (1.41, False)):
        logits = rng.normal(0.0, 1.0, (87, 1))
        logits = (logits - logits.mean()) / logits.std() * spread
        p = 1 / (1 + np.exp(-logits))
        assert prediction_spread(p) == pytest.approx(spread, rel=1e-3)
        assert is_collapsed(p) == collapsed
        flags = decision_flags({"val": {"auroc": 0.7, "auroc_ci95": {"low": 0.6, "high": 0.8}},
                                "val_at_threshold": operating_point(np.r_[[1] * 50, [0] * 37], p[:, 0],
                                                                     float(np.median(p)), 3.0),
                                "at_threshold": operating_point(np.r_[[1] * 50, [0] * 37], p[:, 0],
                                                                 float(np.median(p)), 3.0)}, p)
        assert ("near_constant" in {f["flag"] for f in flags}) == collapsed


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_calibration_lowers_the_ece_of_an_overconfident_model_and_keeps_every_auroc(method):
    rng = np.random.default_rng(6)
    z_true = rng.normal(0, 1.5, (2000, 3))
    y = (rng.random((2000, 3)) < 1 / (1 + np.exp(-z_true))).astype(float)
    p = 1 / (1 + np.exp(-4 * z_true))   # four times too confident
    fitted = calibrate.fit(y[:1000], p[:1000], method)
    assert all(0.15 < s < 0.4 for s in fitted.scale)   # about 1/4
    after = calibrate.apply(p[1000:], fitted)
    for j in range(3):
        assert calibration(y[1000:, j], after[:, j])[0] < calibration(y[1000:, j], p[1000:, j])[0] / 2
    names = ["a", "b", "c"]
    assert per_class_auroc(y[1000:], after, names) == per_class_auroc(y[1000:], p[1000:], names)
    np.testing.assert_allclose(calibrate.invert(after, fitted), p[1000:], rtol=1e-6, atol=2e-7)   # clipped at 1e-7


def test_an_output_with_too_few_positives_keeps_the_identity():
    y = np.zeros((100, 2))
    y[:3, 0] = 1
    y[:50, 1] = 1
    p = np.clip(np.random.default_rng(7).random((100, 2)), 0.01, 0.99)
    fitted = calibrate.fit(y, p, "temperature")
    assert fitted.scale[0] == 1.0 and fitted.scale[1] != 1.0


def test_calibration_folded_into_the_output_layer_is_what_apply_computes():
    from cxr.models.linear import build_linear
    rng = np.random.default_rng(8)
    for exclusive in (False, True):
        model = build_linear(32, 3, 8, 4, activation="softmax" if exclusive else "sigmoid")
        model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                           for w in model.get_weights()])
        images = rng.random((50, 32, 32, 1)).astype(np.float32) * 2   # logits of a few units: nothing saturates
        before = model.predict(images, verbose=0)
        fitted = calibrate.Calibration("platt" if not exclusive else "temperature",
                                       (0.5, 2.0, 1.3) if not exclusive else (0.4,) * 3,
                                       (0.2, -0.1, 0.0) if not exclusive else (0.0,) * 3, exclusive)
        calibrate.fold(model, fitted)
        np.testing.assert_allclose(model.predict(images, verbose=0), calibrate.apply(before, fitted), atol=2e-6)


def test_paired_difference_verdicts():
    rng = np.random.default_rng(9)
    y = rng.random(300) < 0.5
    good, noise = np.clip(rng.normal(0.3 + 0.4 * y, 0.15), 0, 1), rng.random(300)
    w = bootstrap_weights(np.arange(300), 300, 0)
    assert paired_auroc_difference(y, good, noise, w)["verdict"] == "better"
    assert paired_auroc_difference(y, noise, good, w)["verdict"] == "worse"
    same = paired_auroc_difference(y, good, good, w)
    assert same["difference"] == 0 and same["verdict"] == "not distinguishable"


def test_default_variant_prefers_an_unflagged_one_and_says_when_all_are_flagged():
    flag = [{"flag": "auroc_not_above_chance", "split": "val", "detail": "x"}]
    assert default_variant({"a": (0.9, flag), "b": (0.6, []), "c": (None, [])}) == ("b", False)
    assert default_variant({"a": (0.9, flag), "b": (0.6, flag)}) == ("a", True)


def test_the_report_states_the_verdicts_from_the_metrics(full_metadata):
    rng = np.random.default_rng(10)
    y_val, y_test = rng.random(200) < 0.8, rng.random(200) < 0.8
    evals = {}
    for name, strength in (("good", 0.3), ("weak", 0.0)):
        val_p, test_p = (np.clip(rng.normal(0.35 + strength * y, 0.12), 0, 1) for y in (y_val, y_test))
        m = _evaluate(y_val, val_p, y_test, test_p, {"sensitivity": 0.95})["metrics"]
        m["abnormal"]["baselines"]["metadata"] = {
            "train_rows": 1, "train_patients": 1, "auroc": 0.6, "auroc_ci95": None,
            "model_minus_baseline": paired_auroc_difference(y_test, test_p, rng.random(200),
                                                            bootstrap_weights(np.arange(200), 200, 0))}
        m["abnormal"]["baselines"]["metadata_with_follow_up"] = {"auroc": 0.7, "auroc_ci95": None}
        m["abnormal"]["calibration"]["method"] = "temperature"
        evals[name] = m
    data = {"source": "sample", "images": 557, "patients": 500, "split": "patient", "test_images": 200,
            "size": 128, "split_images": {"train": 300, "val": 200, "test": 200}}
    text = summary_markdown(evals, {}, {}, data)
    assert "Enriched test split" in text   # 0.8 against NIH's 0.46
    assert "**weak (flagged)**" in text and "| good |" in text
    assert "**Beat it** (the paired-bootstrap interval of the AUROC difference above 0): good." in text
    good = evals["good"]["abnormal"]
    spec95 = good["specificity_at_sensitivity"]["0.95"]
    assert f"{spec95['per_1000']['normal_set_aside']:.0f} normal set aside per 1,000" in text
    assert f"Default model of `cxr predict` / `cxr serve`: **good**" in text
    card = model_card("good", evals["good"], {"data": "sample", "images": data["split_images"]})
    assert f"threshold {good['at_threshold']['threshold']:.3f}" in card
    assert f"specificity {good['at_threshold']['specificity']:.3f}" in card
    assert "300 train, 200 validation, 200 test images" in card and "Flags**: none" in card
    assert "Flags**: **" in model_card("weak", evals["weak"], {"data": "sample", "images": data["split_images"]})
