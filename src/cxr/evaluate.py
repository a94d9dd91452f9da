"""Metrics (scikit-learn underneath): the one place that scores predictions."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cxr.data.labels import Decision, any_probability, any_target


def per_class_auroc(y: np.ndarray, p: np.ndarray, names: Sequence[str],
                    min_positives: int = 1) -> dict[str, float | None]:
    """AUROC per class; ``None`` where a class has fewer than ``min_positives``
    positives or no negatives (AUROC is undefined there, not zero)."""
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(y), np.asarray(p)
    out = {}
    for j, name in enumerate(names):
        positives = int(y[:, j].sum())
        if positives < max(1, min_positives) or positives == len(y):
            out[name] = None
        else:
            out[name] = float(roc_auc_score(y[:, j], p[:, j]))
    return out


def mean_auroc(y: np.ndarray, p: np.ndarray, min_positives: int = 1) -> float | None:
    """Mean AUROC over the classes where it is defined; ``None`` if none is."""
    scores = [s for s in per_class_auroc(y, p, range(np.asarray(y).shape[1]), min_positives).values()
              if s is not None]
    return float(np.mean(scores)) if scores else None


# A model is collapsed when its outputs barely depend on the image: the median
# target's logit varies by less than this across the validation images.
COLLAPSE_SPREAD = 1e-3


def prediction_spread(p: np.ndarray) -> float:
    """Median over targets of the standard deviation of the logit across images;
    0 for a model that gives every image the same output."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return float(np.median(np.log(q / (1 - q)).std(axis=0)))


def is_collapsed(p: np.ndarray) -> bool:
    return prediction_spread(p) < COLLAPSE_SPREAD


def crossentropy(y: np.ndarray, p: np.ndarray, exclusive: bool = False, eps: float = 1e-7) -> float:
    """Mean unweighted cross-entropy: binary over all images and classes, or for one
    softmax over classes (``exclusive``) categorical over the images."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y, dtype=np.float64)
    if exclusive:
        return float(-np.mean(np.sum(y * np.log(p), axis=1)))
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def pr_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Average precision (area under the precision-recall curve); ``None`` without positives."""
    from sklearn.metrics import average_precision_score
    y = np.asarray(y)
    return float(average_precision_score(y, p)) if 0 < y.sum() < len(y) else None


def weighted_auroc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one class under each row of ``weights`` (rounds x images), at once.

    The Mann-Whitney form (ties count a half), which equals scikit-learn's
    ``roc_auc_score(y, p, sample_weight=w)``; NaN where a round has no
    positives or no negatives.
    """
    order = np.argsort(p, kind="stable")
    y, p, w = np.asarray(y, dtype=np.float64)[order], np.asarray(p)[order], np.atleast_2d(weights)[:, order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])  # groups of tied scores
    pos = np.add.reduceat(w * y, starts, axis=1)
    neg = np.add.reduceat(w * (1 - y), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


BOOTSTRAP_ROUNDS = 1000  # for intervals outside the evaluate stage (validation AUROC, exports)


def bootstrap_weights(patients: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """``rounds x images`` sample weights of a patient-level bootstrap.

    Each round draws patients with replacement and keeps all of a drawn
    patient's images (weight = times drawn), so images of one patient never
    count as independent evidence.
    """
    codes = np.unique(np.asarray(patients), return_inverse=True)[1]
    n_patients = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    drawn = np.stack([np.bincount(rng.integers(0, n_patients, n_patients), minlength=n_patients)
                      for _ in range(rounds)])
    return drawn[:, codes].astype(np.float64)


def bootstrap_aurocs(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``rounds x classes`` AUROCs under each row of ``weights``; NaN where a round lacks a side."""
    y, p = np.asarray(y), np.asarray(p)
    return np.stack([weighted_auroc(y[:, j], p[:, j], weights) for j in range(y.shape[1])], axis=1)


def interval(scores: np.ndarray, level: float = 0.95) -> dict[str, float] | None:
    """Percentile interval ``{'low', 'high'}`` of bootstrap scores, NaN rounds skipped;
    ``None`` if fewer than half the rounds were usable."""
    scores = np.asarray(scores, dtype=np.float64)
    usable = scores[~np.isnan(scores)]
    if len(usable) < len(scores) / 2 or not len(usable):
        return None
    tail = (1 - level) / 2 * 100
    return {"low": float(np.percentile(usable, tail)), "high": float(np.percentile(usable, 100 - tail))}


def bootstrap_auroc(y: np.ndarray, p: np.ndarray, patients: np.ndarray, rounds: int, seed: int,
                    level: float = 0.95) -> list[dict[str, float] | None]:
    """Per-class AUROC confidence intervals from a patient-level bootstrap."""
    scores = bootstrap_aurocs(y, p, bootstrap_weights(patients, rounds, seed))
    return [interval(scores[:, j], level) for j in range(scores.shape[1])]


def auroc_with_interval(truth: np.ndarray, score: np.ndarray, weights: np.ndarray) -> dict:
    """``{'auroc', 'auroc_ci95'}`` of one yes/no score, the interval under bootstrap ``weights``."""
    auroc = per_class_auroc(truth[:, None], score[:, None], ["score"])["score"]
    return {"auroc": auroc, "auroc_ci95": interval(bootstrap_aurocs(truth[:, None], score[:, None], weights)[:, 0])}


def subgroup_aurocs(truth: np.ndarray, score: np.ndarray, groups: Mapping[str, np.ndarray],
                    weights: np.ndarray, levels: Mapping[str, Sequence[str]] | None = None) -> dict:
    """The decision's AUROC with its interval within each subgroup: ``{attribute: {level:
    {'images', 'positives', 'auroc', 'auroc_ci95'}}}``.

    ``groups`` gives each image's level per attribute (``''``: unknown, left out);
    ``levels`` fixes the order (and keeps empty levels) where given. The interval reuses
    the test split's patient bootstrap ``weights``, restricted to the subgroup's images.
    """
    truth, score = np.asarray(truth), np.asarray(score)
    out = {}
    for attribute, values in groups.items():
        values = np.asarray(values, dtype=object)
        names = list((levels or {}).get(attribute) or sorted(set(values) - {""}))
        out[attribute] = {}
        for level in names:
            rows = np.flatnonzero(values == level)
            entry = {"images": int(len(rows)), "positives": int(truth[rows].sum())}
            if len(rows):
                entry.update(auroc_with_interval(truth[rows], score[rows], weights[:, rows]))
            else:
                entry.update(auroc=None, auroc_ci95=None)
            out[attribute][level] = entry
    return out


def expert_label_aurocs(expert: Mapping[str, np.ndarray], covers: Mapping[str, Sequence[str]],
                        targets: Sequence[str], y: np.ndarray, p: np.ndarray, weights: np.ndarray,
                        exclusive: bool = False) -> dict:
    """AUROC of the model against expert labels and, on the same images, against the NLP labels.

    ``expert``: finding -> 0/1 per image (only images that have expert labels); ``covers``:
    finding -> the model targets its score combines (as the decision score: ``any_probability``);
    ``y``/``p``/``weights``: NLP targets, probabilities and bootstrap weights of the same images.
    A finding whose targets the model lacks is reported with its counts and a status.
    """
    y, p, targets = np.asarray(y), np.asarray(p), list(targets)
    out = {}
    for finding, truth in expert.items():
        truth = np.asarray(truth)
        entry = {"images": int(len(truth)), "expert_positives": int(truth.sum())}
        cols = [targets.index(t) for t in covers.get(finding, ()) if t in targets]
        if not cols or len(cols) < len(covers[finding]) or not len(truth):
            entry["status"] = ("no test image has expert labels" if not len(truth) else
                               "no NIH finding to compare" if not covers.get(finding) else
                               f"the model has no output for {' / '.join(covers[finding])}")
            out[finding] = entry
            continue
        nlp, score = y[:, cols].max(axis=1), any_probability(p[:, cols], exclusive)
        entry.update({"model_outputs": [targets[c] for c in cols], "nlp_positives": int(nlp.sum()),
                      "nlp_agreement": float((nlp == truth).mean()),
                      "expert": auroc_with_interval(truth, score, weights),
                      "nlp": auroc_with_interval(nlp, score, weights), "status": "ok"})
        out[finding] = entry
    return out


def decision_auroc(decision: Decision, y: np.ndarray, p: np.ndarray, patients: np.ndarray,
                   rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> dict:
    """``{'auroc', 'auroc_ci95'}`` of the decision's score against its truth, the interval
    from a patient-level bootstrap."""
    return auroc_with_interval(decision.truth(y), decision.score(p), bootstrap_weights(patients, rounds, seed))


def mean_auroc_interval(y: np.ndarray, p: np.ndarray, patients: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS,
                        seed: int = 0, min_positives: int = 1) -> dict[str, float] | None:
    """Interval of ``mean_auroc`` (over the classes it counts) from a patient-level bootstrap."""
    counted = [j for j, s in enumerate(per_class_auroc(y, p, range(np.asarray(y).shape[1]),
                                                       min_positives).values()) if s is not None]
    if not counted:
        return None
    y, p = np.asarray(y)[:, counted], np.asarray(p)[:, counted]
    return interval(bootstrap_aurocs(y, p, bootstrap_weights(patients, rounds, seed)).mean(axis=1))


def fbeta(tp: int, fp: int, fn: int, beta: float) -> float:
    b2 = beta * beta
    denominator = (1 + b2) * tp + b2 * fn + fp
    return float((1 + b2) * tp / denominator) if denominator else 0.0


def choose_threshold(y: np.ndarray, score: np.ndarray, method: str | float, beta: float = 3.0) -> float:
    """Operating threshold from *validation* data: ``'youden'`` (max sensitivity
    + specificity - 1), ``'fbeta'`` (max F-beta) or a fixed number."""
    if not isinstance(method, str):
        return float(method)
    from sklearn.metrics import roc_curve

    y, score = np.asarray(y).astype(int), np.asarray(score, dtype=np.float64)
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(y, score)
        best = int(np.argmax(tpr - fpr))
        return float(min(thresholds[best], 1.0))
    if method == "fbeta":
        if not y.any():  # F-beta is 0 at every threshold: flag nothing below the lowest score
            return float(score.min())
        from sklearn.metrics import precision_recall_curve
        precision, recall, thresholds = precision_recall_curve(y, score)
        b2 = beta * beta
        denominator = b2 * precision + recall
        f = np.divide((1 + b2) * precision * recall, denominator, out=np.zeros_like(denominator),
                      where=denominator > 0)
        f = f[:-1]  # the last point (recall 0) has no threshold
        # Ties (equal F at several thresholds, up to rounding): the lowest, i.e. the most sensitive.
        return float(thresholds[np.flatnonzero(f >= f.max() - 1e-12)[0]])
    raise ValueError(f"unknown threshold method {method!r}")


def confusion(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, int]:
    """Counts at ``score >= threshold`` meaning positive (abnormal)."""
    y = np.asarray(y).astype(bool)
    flagged = np.asarray(score) >= threshold
    return {"tp": int((flagged & y).sum()), "fp": int((flagged & ~y).sum()),
            "fn": int((~flagged & y).sum()), "tn": int((~flagged & ~y).sum())}


def operating_point(y: np.ndarray, score: np.ndarray, threshold: float, beta: float) -> dict:
    """Sensitivity, specificity, F-beta and the confusion matrix at a threshold."""
    c = confusion(y, score, threshold)
    positives, negatives = c["tp"] + c["fn"], c["tn"] + c["fp"]
    return {"threshold": float(threshold),
            "sensitivity": c["tp"] / positives if positives else None,
            "specificity": c["tn"] / negatives if negatives else None,
            "fbeta": fbeta(c["tp"], c["fp"], c["fn"], beta), "beta": beta, "confusion": c}


def triage_curve(y: np.ndarray, score: np.ndarray, points: int = 101) -> list[dict]:
    """For each threshold: share of negative (e.g. normal) exams a radiologist could skip
    (scored below it) and share of positive (e.g. abnormal) exams that would be missed."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score)
    rows = []
    for t in np.linspace(0, 1, points):
        below = score < t
        rows.append({"threshold": round(float(t), 4),
                     "negatives_skipped": float(below[~y].mean()) if (~y).any() else 0.0,
                     "positives_missed": float(below[y].mean()) if y.any() else 0.0})
    return rows


def baselines(y: np.ndarray, beta: float) -> dict:
    """What trivial rules score on the same test data."""
    y = np.asarray(y).astype(bool)
    prevalence = float(y.mean())
    return {
        "always_positive": {"sensitivity": 1.0, "specificity": 0.0, "auroc": 0.5,
                            "fbeta": fbeta(int(y.sum()), int((~y).sum()), 0, beta)},
        "prevalence": {"description": "flag at random with probability = prevalence",
                       "prevalence": prevalence, "sensitivity": prevalence, "specificity": 1 - prevalence,
                       "auroc": 0.5},
    }


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error (equal-width bins) and the reliability curve."""
    y, p = np.asarray(y, dtype=np.float64).ravel(), np.asarray(p, dtype=np.float64).ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece, curve = 0.0, []
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        predicted, observed = float(p[mask].mean()), float(y[mask].mean())
        ece += mask.mean() * abs(predicted - observed)
        curve.append({"bin": b, "mean_predicted": predicted, "fraction_positive": observed,
                      "count": int(mask.sum())})
    return float(ece), curve


def evaluate_predictions(targets: Sequence[str], test_y: np.ndarray, test_p: np.ndarray,
                         test_patients: np.ndarray, val_y: np.ndarray, val_p: np.ndarray, *,
                         threshold: str | float, beta: float, min_positives: int, weights: np.ndarray,
                         decision: Decision | None = None) -> dict:
    """Everything ``metrics/eval/<variant>.json`` reports, plus the curves to plot.

    ``weights``: the test split's patient bootstrap (``bootstrap_weights(test_patients, ...)``),
    which every interval resamples. The decision (e.g. ``abnormal``: any finding; for a binary
    task, its target) is reported under its positive name; its threshold is chosen on ``val_*``
    only, test data never influences it. Default: any target positive.
    """
    decision = decision or any_target(np.asarray(test_y).shape[1])
    targets = list(targets)
    aurocs = per_class_auroc(test_y, test_p, targets, min_positives=1)
    rounds = bootstrap_aurocs(test_y, test_p, weights)
    per_class, counted = {}, []
    for j, name in enumerate(targets):
        positives = int(test_y[:, j].sum())
        enough = positives >= min_positives and aurocs[name] is not None
        per_class[name] = {
            "positives": positives, "auroc": aurocs[name], "pr_auc": pr_auc(test_y[:, j], test_p[:, j]),
            "auroc_ci95": interval(rounds[:, j]),
            "status": "ok" if enough else f"fewer than {min_positives} test positives: not in the mean",
        }
        if enough:
            counted.append(j)

    truth, score = decision.truth(test_y), decision.score(test_p)
    val_truth, val_score = decision.truth(val_y), decision.score(val_p)
    t = choose_threshold(val_truth, val_score, threshold, beta)
    ece, reliability = calibration(truth, score)
    metrics = {
        "mean_auroc": float(np.mean([aurocs[targets[j]] for j in counted])) if counted else None,
        "mean_auroc_ci95": interval(rounds[:, counted].mean(axis=1)) if counted else None,
        "mean_auroc_classes": len(counted),
        "per_class": per_class,
        "decision": decision.positive,
        decision.positive: {
            **auroc_with_interval(truth, score, weights),
            "pr_auc": pr_auc(truth, score), "prevalence": float(truth.mean()),
            "threshold_method": threshold if isinstance(threshold, str) else "fixed",
            "threshold_source": "validation split",
            "at_threshold": operating_point(truth, score, t, beta),
            "ece": ece, "baselines": baselines(truth, beta),
        },
        "test_images": int(len(test_y)), "test_patients": int(len(np.unique(test_patients))),
        "bootstrap_rounds": len(weights),
    }
    curves = {"triage": triage_curve(truth, score), "reliability": reliability,
              "truth": truth, "score": score, "threshold": t}
    return {"metrics": metrics, "curves": curves}


def flat_metrics(metrics: dict) -> dict[str, float]:
    """The scalar figures of an evaluation, flattened (``per_class.Edema.auroc``)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out[prefix[:-1]] = float(node)
    walk(metrics, "")
    return out


def curve_tables(curves: dict, names: tuple[str, str] = ("abnormal", "normal")) -> dict[str, "pd.DataFrame"]:
    """The decision score's curves as the tables `dvc plots` reads (``<name>.csv``):
    ROC, precision-recall, calibration, triage, and per-image actual/predicted
    (``names``: positive, negative)."""
    import pandas as pd
    from sklearn.metrics import precision_recall_curve, roc_curve

    truth, score, threshold = curves["truth"], curves["score"], curves["threshold"]
    fpr, tpr, _ = roc_curve(truth, score)
    precision, recall, _ = precision_recall_curve(truth, score)
    names = np.array([names[1], names[0]])
    return {"roc": pd.DataFrame({"fpr": fpr, "tpr": tpr}),
            "pr": pd.DataFrame({"recall": recall, "precision": precision}),
            "calibration": pd.DataFrame(curves["reliability"]),
            "triage": pd.DataFrame(curves["triage"]),
            "confusion": pd.DataFrame({"actual": names[truth.astype(int)],
                                       "predicted": names[(score >= threshold).astype(int)]})}
