"""Baselines that look at no image: what the metadata alone predicts.

Gradient boosting (scikit-learn) on the fields a DICOM header carries (age,
sex, view position), trained on every labelled row of the official metadata
whose patient is in neither the validation nor the test split, so it learns
from ~100k rows even when the pipeline runs on the bundled sample, and is
scored on the same test images as the models. The same with the follow-up
number is reported beside it, marked as a dataset artifact: the count of a
patient's earlier visits tracks how sick they are, but no scanner writes it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from cxr.data.labels import multi_hot

HEADER_FEATURES = ("Patient Age", "Patient Gender", "View Position")
ARTIFACT_FEATURE = "Follow-up #"


def metadata_features(table: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Numeric features: age in years (NaN when missing), female 1/0, AP view 1/0, follow-up number."""
    encode = {
        "Patient Age": lambda c: c.astype(float),
        "Patient Gender": lambda c: c.map({"F": 1.0, "M": 0.0}),
        "View Position": lambda c: c.map({"AP": 1.0, "PA": 0.0}),
        ARTIFACT_FEATURE: lambda c: c.astype(float),
    }
    return np.column_stack([encode[name](table[name]).to_numpy(dtype=np.float64) for name in columns])


def metadata_baseline(meta: pd.DataFrame, held_out_patients: Iterable, views: Sequence[str], target: str,
                      test_table: pd.DataFrame, columns: Sequence[str], seed: int) -> tuple[dict, np.ndarray]:
    """Fit on ``meta`` rows in ``views`` whose patient is not held out; score ``test_table``.

    ``target``: ``abnormal`` (any finding) or a finding. Returns what was
    fitted (features, rows, patients) and the test scores, in ``test_table``'s order.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    held_out = {str(p) for p in held_out_patients}
    rows = meta[~meta["Patient ID"].astype(str).isin(held_out) & meta["View Position"].isin(tuple(views))]
    y = multi_hot(rows["Finding Labels"])[target].to_numpy()
    # Fixed settings, seeded: early stopping on a seeded 10% of the rows, histogram sums per feature.
    model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, early_stopping=True,
                                           random_state=seed)
    # One OpenMP thread: same scores, 3.7 s instead of 12 s per fit here when the other core is busy
    # (OpenMP threads spin-wait for each other on a loaded machine).
    with threadpool_limits(1, "openmp"):
        model.fit(metadata_features(rows, columns), y)
        scores = model.predict_proba(metadata_features(test_table, columns))[:, 1]
    fitted = {"features": list(columns), "train_rows": int(len(rows)),
              "train_patients": int(rows["Patient ID"].nunique()), "iterations": int(model.n_iter_)}
    return fitted, scores


def metadata_baselines(meta: pd.DataFrame, held_out_patients: Iterable, views: Sequence[str], target: str,
                       test_table: pd.DataFrame, truth: np.ndarray, weights: np.ndarray, seed: int,
                       model_score: np.ndarray | None = None) -> dict:
    """Both metadata baselines, each with its test AUROC and interval (under the models' bootstrap
    ``weights``) and, given the model's ``model_score`` on the same images, the paired difference
    of the model's AUROC and the baseline's (``model_minus_baseline``)."""
    from cxr.evaluate import auroc_with_interval, paired_auroc_difference

    held_out = list(held_out_patients)
    out = {}
    for key, columns, use in (
            ("metadata", HEADER_FEATURES, "usable at inference: fields a DICOM header carries"),
            ("metadata_with_follow_up", HEADER_FEATURES + (ARTIFACT_FEATURE,),
             "dataset artifact, not usable at inference: no scanner writes the follow-up number")):
        fitted, scores = metadata_baseline(meta, held_out, views, target, test_table, columns, seed)
        out[key] = {**fitted, **auroc_with_interval(truth, scores, weights), "use": use}
        if model_score is not None:
            out[key]["model_minus_baseline"] = paired_auroc_difference(truth, model_score, scores, weights)
    return out
