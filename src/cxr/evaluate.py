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


def paired_auroc_difference(truth: np.ndarray, score: np.ndarray, other: np.ndarray, weights: np.ndarray) -> dict:
    """AUROC of ``score`` minus that of ``other`` on the same images, the interval from the same
    bootstrap rounds for both (paired), and the verdict it supports: ``better``, ``worse`` or
    ``not distinguishable`` (the interval contains 0)."""
    truth = np.asarray(truth)[:, None]
    both = bootstrap_aurocs(np.hstack([truth, truth]), np.column_stack([score, other]), weights)
    a, b = (per_class_auroc(truth, np.asarray(s)[:, None], ["s"])["s"] for s in (score, other))
    ci = interval(both[:, 0] - both[:, 1])
    verdict = ("undefined" if a is None or b is None or ci is None else
               "better" if ci["low"] > 0 else "worse" if ci["high"] < 0 else "not distinguishable")
    return {"difference": None if a is None or b is None else a - b, "ci95": ci, "verdict": verdict}


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


def threshold_name(method: str | float | Mapping) -> str:
    """A threshold rule in words: ``youden``, ``fbeta``, ``fixed``, ``sensitivity >= 0.95``."""
    if isinstance(method, Mapping):
        (metric, target), = method.items()
        return f"{metric} >= {target:g}"
    return method if isinstance(method, str) else "fixed"


def _flagged_counts(y: np.ndarray, score: np.ndarray, weights: np.ndarray):
    """Distinct scores, highest first, and the (weighted) positives and negatives flagged at
    each (``score >= threshold``): ``rounds x thresholds`` arrays, and each round's totals."""
    order = np.argsort(-score, kind="stable")
    s, y, w = score[order], y[order].astype(np.float64), weights[:, order]
    last = np.r_[s[1:] != s[:-1], True]          # the last image of each group of tied scores
    tp = np.cumsum(w * y, axis=1)[:, last]
    fp = np.cumsum(w * (1 - y), axis=1)[:, last]
    return s[last], tp, fp, tp[:, -1], fp[:, -1]


def choose_thresholds(y: np.ndarray, score: np.ndarray, method: str | float | Mapping, beta: float = 3.0,
                      weights: np.ndarray | None = None) -> np.ndarray:
    """The operating threshold from *validation* data, per row of ``weights`` (a bootstrap's
    rounds; default one round of weight 1): ``'youden'`` (max sensitivity + specificity - 1, the
    highest such threshold), ``'fbeta'`` (max F-beta, the lowest such), ``{'sensitivity': x}``
    (the highest threshold whose sensitivity is at least x), ``{'specificity': x}`` (the lowest
    whose specificity is at least x) or a fixed number. Positive means ``score >= threshold``."""
    y, score = np.asarray(y).astype(bool), np.asarray(score, dtype=np.float64)
    weights = np.ones((1, len(y))) if weights is None else np.atleast_2d(weights)
    if not isinstance(method, (str, Mapping)):
        return np.full(len(weights), float(method))
    thresholds, tp, fp, positives, negatives = _flagged_counts(y, score, weights)
    # A round chooses among the scores it drew (a zero weight is an image it left out).
    drawn = np.diff(tp + fp, axis=1, prepend=0) > 0
    rows = np.arange(len(weights))
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, fpr = tp / positives[:, None], fp / negatives[:, None]

    def first(ok):   # the highest drawn threshold where ok (the lowest drawn one if none is)
        ok = ok & drawn
        return thresholds[np.where(ok.any(axis=1), ok.argmax(axis=1), len(thresholds) - 1 - drawn[:, ::-1].argmax(axis=1))]

    def last(ok):    # the lowest drawn threshold where ok
        ok = ok & drawn
        return thresholds[len(thresholds) - 1 - ok[:, ::-1].argmax(axis=1)], ok.any(axis=1)

    if isinstance(method, Mapping):
        (metric, target), = method.items()
        if metric == "sensitivity":
            return first(sens >= target - 1e-12)
        if metric == "specificity":
            t, found = last(1 - fpr >= target - 1e-12)
            top = thresholds[drawn.argmax(axis=1)]
            return np.where(found, t, np.nextafter(top, np.inf))   # none keeps it: flag nothing
        raise ValueError(f"unknown threshold target {metric!r}")
    if method == "youden":
        j = np.where(drawn, np.nan_to_num(sens - fpr, nan=-np.inf), -np.inf)
        return np.minimum(thresholds[j.argmax(axis=1)], 1.0)
    if method == "fbeta":
        b2 = beta * beta
        f = np.nan_to_num((1 + b2) * tp / ((1 + b2) * tp + b2 * (positives[:, None] - tp) + fp), nan=0.0)
        f = np.where(drawn, f, -np.inf)
        # Ties (equal F at several thresholds, up to rounding): the lowest, i.e. the most sensitive.
        return last(f >= f[rows].max(axis=1, keepdims=True) - 1e-12)[0]
    raise ValueError(f"unknown threshold method {method!r}")


def choose_threshold(y: np.ndarray, score: np.ndarray, method: str | float | Mapping, beta: float = 3.0) -> float:
    """``choose_thresholds`` on the data as it is."""
    return float(choose_thresholds(y, score, method, beta)[0])


def confusion(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, int]:
    """Counts at ``score >= threshold`` meaning positive (abnormal)."""
    y = np.asarray(y).astype(bool)
    flagged = np.asarray(score) >= threshold
    return {"tp": int((flagged & y).sum()), "fp": int((flagged & ~y).sum()),
            "fn": int((~flagged & y).sum()), "tn": int((~flagged & ~y).sum())}


def predictive_values(sensitivity, specificity, prevalence: float):
    """PPV and NPV at ``prevalence`` (Bayes' rule; arrays work elementwise); NaN where undefined."""
    s, c, q = np.asarray(sensitivity, dtype=np.float64), np.asarray(specificity, dtype=np.float64), prevalence
    with np.errstate(invalid="ignore", divide="ignore"):
        return s * q / (s * q + (1 - c) * (1 - q)), c * (1 - q) / (c * (1 - q) + (1 - s) * q)


def _rates(y: np.ndarray, score: np.ndarray, thresholds: np.ndarray, weights: np.ndarray, beta: float) -> dict:
    """Weighted sensitivity, specificity, F-beta and the data's prevalence per round, each
    round at its own threshold (``thresholds``: one per row of ``weights``)."""
    y = np.asarray(y).astype(bool)
    flagged = np.asarray(score)[None, :] >= np.asarray(thresholds)[:, None]
    tp, fn = (weights * (flagged & y)).sum(axis=1), (weights * (~flagged & y)).sum(axis=1)
    fp, tn = (weights * (flagged & ~y)).sum(axis=1), (weights * (~flagged & ~y)).sum(axis=1)
    b2 = beta * beta
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
                "fbeta": (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp), "prevalence": (tp + fn) / (tp + fn + fp + tn)}


def _value(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def operating_point(y: np.ndarray, score: np.ndarray, threshold: float, beta: float,
                    weights: np.ndarray | None = None, prevalence: float | None = None) -> dict:
    """Sensitivity, specificity, F-beta, PPV and NPV (at the data's prevalence and, where given,
    at ``prevalence``) and the confusion matrix at a threshold; with bootstrap ``weights``, a
    95% interval (``<figure>_ci95``) for each, at the same threshold."""
    y, score = np.asarray(y).astype(bool), np.asarray(score, dtype=np.float64)
    one = _rates(y, score, np.array([threshold]), np.ones((1, len(y))), beta)
    out = {"threshold": float(threshold), "beta": beta, "confusion": confusion(y, score, threshold)}
    figures = {k: one[k] for k in ("sensitivity", "specificity", "fbeta")}
    figures["ppv"], figures["npv"] = predictive_values(one["sensitivity"], one["specificity"], float(one["prevalence"][0]))
    if prevalence is not None:
        figures["ppv_at_prevalence"], figures["npv_at_prevalence"] = predictive_values(
            one["sensitivity"], one["specificity"], prevalence)
    out.update({k: _value(v[0]) for k, v in figures.items()})
    if prevalence is not None:
        out["prevalence"] = prevalence
    if weights is not None:
        rounds = _rates(y, score, np.full(len(weights), threshold), weights, beta)
        spread = {k: rounds[k] for k in ("sensitivity", "specificity", "fbeta")}
        spread["ppv"], spread["npv"] = predictive_values(rounds["sensitivity"], rounds["specificity"],
                                                         rounds["prevalence"])
        if prevalence is not None:
            spread["ppv_at_prevalence"], spread["npv_at_prevalence"] = predictive_values(
                rounds["sensitivity"], rounds["specificity"], prevalence)
        out.update({f"{k}_ci95": interval(v) for k, v in spread.items()})
    return out


SENSITIVITY_LEVELS = (0.90, 0.95, 0.99)


def specificity_at_sensitivity(y: np.ndarray, score: np.ndarray, weights: np.ndarray, prevalence: float,
                               levels: Sequence[float] = SENSITIVITY_LEVELS) -> dict:
    """Read off this split's ROC curve at each sensitivity level: the highest threshold whose
    sensitivity reaches it, the specificity there, each with its bootstrap interval (the
    threshold re-read in every round), and per 1,000 exams at ``prevalence`` the normal exams
    that could be set aside and the abnormal exams missed. The threshold is set on this
    split: what the model can do, not an operating point chosen on validation."""
    y, score = np.asarray(y).astype(bool), np.asarray(score, dtype=np.float64)
    out = {}
    for level in levels:
        rule = {"sensitivity": level}
        t = choose_threshold(y, score, rule)
        point = _rates(y, score, np.array([t]), np.ones((1, len(y))), 1.0)
        rounds = _rates(y, score, choose_thresholds(y, score, rule, weights=weights), weights, 1.0)
        sens, spec = float(point["sensitivity"][0]), float(point["specificity"][0])
        out[f"{level:.2f}"] = {
            "threshold": float(t), "sensitivity": sens, "specificity": spec,
            "specificity_ci95": interval(rounds["specificity"]),
            "per_1000": {"prevalence": prevalence, "normal_set_aside": round(1000 * spec * (1 - prevalence), 1),
                         "abnormal_missed": round(1000 * (1 - sens) * prevalence, 1),
                         "abnormal_missed_at_most": round(1000 * (1 - level) * prevalence, 1)}}
    return out


def operating_point_with_intervals(val_y: np.ndarray, val_score: np.ndarray, test_y: np.ndarray,
                                   test_score: np.ndarray, method: str | float | Mapping, beta: float,
                                   val_weights: np.ndarray, test_weights: np.ndarray, prevalence: float) -> dict:
    """The threshold chosen on validation, with the interval of re-choosing it on each
    bootstrap round of the validation patients, and the operating point it gives on val and
    on test, each figure with its interval."""
    t = choose_threshold(val_y, val_score, method, beta)
    fixed = not isinstance(method, (str, Mapping))
    return {"threshold": t, "threshold_method": threshold_name(method),
            "threshold_ci95": None if fixed else interval(choose_thresholds(val_y, val_score, method, beta,
                                                                            val_weights)),
            "val": operating_point(val_y, val_score, t, beta, val_weights, prevalence),
            "test": operating_point(test_y, test_score, t, beta, test_weights, prevalence)}


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
    """What trivial rules score on the same test data: flagging every exam (its figures
    computed like a model's, at a threshold every score passes) and flagging at random."""
    y = np.asarray(y).astype(bool)
    prevalence = float(y.mean())
    flag_all = operating_point(y, np.ones(len(y)), 1.0, beta)
    return {
        "always_positive": {"sensitivity": flag_all["sensitivity"], "specificity": flag_all["specificity"],
                            "fbeta": flag_all["fbeta"], "ppv": flag_all["ppv"], "auroc": 0.5},
        "prevalence": {"description": "flag at random with probability = prevalence",
                       "prevalence": prevalence, "sensitivity": prevalence, "specificity": 1 - prevalence,
                       "auroc": 0.5},
    }


def _bins(p: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.digitize(p, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error (equal-width bins) and the reliability curve."""
    y, p = np.asarray(y, dtype=np.float64).ravel(), np.asarray(p, dtype=np.float64).ravel()
    which = _bins(p, bins)
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


def ece_interval(y: np.ndarray, p: np.ndarray, weights: np.ndarray, bins: int = 10) -> dict | None:
    """The bootstrap interval of ``calibration``'s ECE: per round, each bin's weighted gap
    between mean score and share positive, weighted by the bin's share of the round."""
    y, p = np.asarray(y, dtype=np.float64).ravel(), np.asarray(p, dtype=np.float64).ravel()
    onehot = np.eye(bins)[_bins(p, bins)]
    gaps = weights @ ((p - y)[:, None] * onehot)
    return interval(np.abs(gaps).sum(axis=1) / weights.sum(axis=1))


# A model is collapsed when its outputs barely depend on the image: the median target's logit
# varies by less than this across the validation images. Measured on the bundled sample: the
# ios_app recipe's near-constant model 0.005, the healthy default variants 0.29 to 1.41; this is
# near their geometric midpoint (0.038), an order of magnitude from each.
COLLAPSE_SPREAD = 0.04


def prediction_spread(p: np.ndarray) -> float:
    """Median over targets of the standard deviation of the logit across images;
    0 for a model that gives every image the same output."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return float(np.median(np.log(q / (1 - q)).std(axis=0)))


def is_collapsed(p: np.ndarray) -> bool:
    return prediction_spread(p) < COLLAPSE_SPREAD


def decision_flags(decision: Mapping, val_p: np.ndarray) -> list[dict]:
    """Why a decision should not be acted on, each ``{'flag', 'split', 'detail'}``: a near-constant
    model, a validation AUROC whose interval does not exceed 0.5, and an operating point no better
    than a trivial rule on val or test (its specificity or sensitivity interval reaches 0, or
    sensitivity + specificity <= 1: a random rule flagging as often does as well)."""
    flags = []
    spread = prediction_spread(val_p)
    if spread < COLLAPSE_SPREAD:
        flags.append({"flag": "near_constant", "split": "val",
                      "detail": f"prediction spread {spread:.3g} < {COLLAPSE_SPREAD:g}: the outputs barely "
                                "depend on the image"})
    val = decision["val"]
    ci = val.get("auroc_ci95")
    if val.get("auroc") is None or ci is None or ci["low"] <= 0.5:
        shown = "undefined" if val.get("auroc") is None else (
            f"{val['auroc']:.3f}" + (f" (95% CI {ci['low']:.3f}-{ci['high']:.3f})" if ci else ""))
        flags.append({"flag": "auroc_not_above_chance", "split": "val",
                      "detail": f"validation AUROC {shown}: not shown to beat chance"})
    for split, op in (("val", decision["val_at_threshold"]), ("test", decision["at_threshold"])):
        sens, spec = op["sensitivity"], op["specificity"]
        reasons = [f"its {name} interval reaches 0" for name in ("specificity", "sensitivity")
                   if (op.get(f"{name}_ci95") or {"low": 0.0})["low"] <= 0]
        if sens is not None and spec is not None and sens + spec <= 1:
            reasons.append(f"sensitivity {sens:.3f} + specificity {spec:.3f} <= 1 (no better than random)")
        if reasons:
            flags.append({"flag": "trivial_operating_point", "split": split,
                          "detail": f"at threshold {op['threshold']:.3f}: " + "; ".join(reasons)})
    return flags


def below_chance(per_class: Mapping[str, Mapping]) -> list[str]:
    """Findings whose AUROC interval lies wholly below 0.5: the model ranks them backwards."""
    return [name for name, c in per_class.items() if c.get("auroc_ci95") and c["auroc_ci95"]["high"] < 0.5]


def evaluate_predictions(targets: Sequence[str], test_y: np.ndarray, test_p: np.ndarray,
                         test_patients: np.ndarray, val_y: np.ndarray, val_p: np.ndarray, *,
                         threshold: str | float | Mapping, beta: float, min_positives: int, weights: np.ndarray,
                         val_weights: np.ndarray, prevalence: float, decision: Decision | None = None,
                         uncalibrated: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Everything ``metrics/eval/<variant>.json`` reports, plus the curves to plot.

    ``weights`` / ``val_weights``: the test and validation splits' patient bootstraps
    (``bootstrap_weights``), which every interval resamples. The decision (e.g. ``abnormal``:
    any finding; for a binary task, its target) is reported under its positive name; its
    threshold is chosen on ``val_*`` only, test data never influences it. ``prevalence``: the
    decision's prevalence where the model will be used, for PPV, NPV and counts per 1,000.
    ``uncalibrated``: the val and test outputs before calibration, for before/after figures and
    the collapse check (a calibration map can stretch a near-constant output).
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
    chosen = operating_point_with_intervals(val_truth, val_score, truth, score, threshold, beta, val_weights,
                                            weights, prevalence)
    ece, reliability = calibration(truth, score)
    calibrated = {"ece": ece, "ece_ci95": ece_interval(truth, score, weights), "reliability": reliability}
    before, raw_val_p = None, val_p
    if uncalibrated is not None:
        raw_val_p, raw = uncalibrated[0], decision.score(uncalibrated[1])
        raw_ece, raw_curve = calibration(truth, raw)
        before = {"ece": raw_ece, "ece_ci95": ece_interval(truth, raw, weights), "reliability": raw_curve}
    result = {
        **auroc_with_interval(truth, score, weights),
        "pr_auc": pr_auc(truth, score), "prevalence": float(truth.mean()),
        "val": {**auroc_with_interval(val_truth, val_score, val_weights), "prevalence": float(val_truth.mean()),
                "images": int(len(val_truth))},
        "threshold_method": chosen["threshold_method"], "threshold_ci95": chosen["threshold_ci95"],
        "threshold_source": "validation split", "target_prevalence": prevalence,
        "at_threshold": chosen["test"], "val_at_threshold": chosen["val"],
        "specificity_at_sensitivity": specificity_at_sensitivity(truth, score, weights, prevalence),
        "ece": ece, "calibration": {"after": calibrated, "before": before},
        "baselines": baselines(truth, beta),
    }
    metrics = {
        "mean_auroc": float(np.mean([aurocs[targets[j]] for j in counted])) if counted else None,
        "mean_auroc_ci95": interval(rounds[:, counted].mean(axis=1)) if counted else None,
        "mean_auroc_classes": len(counted),
        "per_class": per_class, "below_chance_findings": below_chance(per_class),
        "decision": decision.positive, decision.positive: result,
        "flags": decision_flags(result, raw_val_p),
        "test_images": int(len(test_y)), "test_patients": int(len(np.unique(test_patients))),
        "bootstrap_rounds": len(weights),
    }
    curves = {"triage": triage_curve(truth, score), "reliability": reliability,
              "truth": truth, "score": score, "threshold": chosen["threshold"]}
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
