"""Targets from metadata: 14 multi-hot findings, ``No Finding`` and ``abnormal``; the
yes/no decision a model's outputs make."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr.data.metadata import FINDINGS, NO_FINDING, MetadataError

ABNORMAL = "abnormal"
LABEL_COLUMNS = FINDINGS + (NO_FINDING, ABNORMAL)
NORMAL = "normal"
_KEEP = ("Image Index", "Patient ID", "Follow-up #", "Patient Age", "Patient Gender", "View Position")


def decision_names(task: str, target: str) -> tuple[str, str]:
    """Names of the yes/no decision a model makes, positive first: ``abnormal`` / ``normal``
    for the 14 findings or the ``abnormal`` target, else the finding and ``no <finding>``."""
    positive = ABNORMAL if task == "multilabel" else target
    return positive, negative_name(positive)


def negative_name(positive: str) -> str:
    """The decision's other side: ``normal`` for ``abnormal``, else ``no <finding>``."""
    return NORMAL if positive == ABNORMAL else f"no {positive}"


def any_probability(probabilities: np.ndarray, exclusive: bool = False) -> np.ndarray:
    """The probability that any of the columns is positive: one column itself; for
    sigmoid outputs the noisy-OR ``1 - prod(1 - p_i)`` (taken as independent); for
    classes of one softmax (``exclusive``) their sum."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 1 or p.shape[1] == 1:
        return p.reshape(-1)
    if exclusive:
        return np.minimum(p.sum(axis=1), 1.0)
    return 1.0 - np.prod(1.0 - p, axis=1)


@dataclass(frozen=True)
class Decision:
    """The yes/no call made from a model's outputs: ``positive`` when any output in
    ``columns`` is (its truth from the targets, its score from the probabilities)."""
    positive: str
    negative: str
    columns: tuple[int, ...]
    exclusive: bool = False   # the outputs are one softmax over classes

    def truth(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y)[:, list(self.columns)].max(axis=1)

    def score(self, p: np.ndarray) -> np.ndarray:
        return any_probability(np.asarray(p)[:, list(self.columns)], self.exclusive)

    def describe(self, targets: Sequence[str]) -> str:
        """How the score is computed, in words (for the model bundle)."""
        names = [targets[c] for c in self.columns]
        if len(names) == 1:
            return f"the probability of {names[0]}"
        if self.exclusive:
            return "the sum of the class probabilities of " + ", ".join(names)
        return "noisy-OR of the finding probabilities, 1 - prod(1 - p)"


def any_target(targets: int) -> Decision:
    """The decision of independent outputs when none is named: ``abnormal``, any target positive."""
    return Decision(ABNORMAL, NORMAL, tuple(range(targets)))


def decision_for(task: str, target: str, targets: Sequence[str]) -> Decision:
    """The decision of a task whose model outputs ``targets``: ``abnormal`` (any finding:
    every output of a multi-label model; for classes, every class but No Finding), or
    the target itself (binary: the one output; multiclass: that class)."""
    positive, negative = decision_names(task, target)
    targets = list(targets)
    if task == "multiclass":
        columns = [i for i, t in enumerate(targets) if t != NO_FINDING] if positive == ABNORMAL \
            else [targets.index(positive)]
    else:
        columns = list(range(len(targets)))
    return Decision(positive, negative, tuple(columns), exclusive=task == "multiclass")


def single_class(table: pd.DataFrame, classes: Sequence[str]) -> tuple[pd.DataFrame, dict]:
    """The rows that belong to exactly one of ``classes`` (label columns; ``No Finding``
    is a class like any other), for a single-label task, and how many were dropped."""
    belongs = table[list(classes)].sum(axis=1)
    kept = table[belongs == 1].reset_index(drop=True)
    if kept.empty:
        raise MetadataError(f"labels.classes {list(classes)}: none of the {len(table)} images belongs to "
                            "exactly one of them")
    return kept, {"classes": list(classes), "dropped_no_class": int((belongs == 0).sum()),
                  "dropped_several_classes": int((belongs > 1).sum()), "rows": int(len(kept))}


def multi_hot(finding_labels: pd.Series) -> pd.DataFrame:
    """One uint8 column per finding, plus ``No Finding`` and ``abnormal`` (any finding)."""
    dummies = finding_labels.str.get_dummies(sep="|")
    out = pd.DataFrame(index=finding_labels.index)
    for name in FINDINGS:
        out[name] = dummies[name].astype("uint8") if name in dummies else 0
    out[ABNORMAL] = (out[list(FINDINGS)].sum(axis=1) > 0).astype("uint8")
    out[NO_FINDING] = (1 - out[ABNORMAL]).astype("uint8")
    return out[list(LABEL_COLUMNS)]


def build_labels(meta: pd.DataFrame, views: Iterable[str], present: Iterable[str],
                 source: str = "metadata") -> tuple[pd.DataFrame, dict]:
    """The label table for images that exist and are in ``views``.

    Returns the table (metadata columns + ``LABEL_COLUMNS``) sorted by image
    name, and a report of what was dropped and why.
    """
    present = set(present)
    views = tuple(views)
    listed = set(meta["Image Index"])
    on_disk = meta["Image Index"].isin(present)
    in_view = meta["View Position"].isin(views) if "View Position" in meta else pd.Series(True, index=meta.index)
    keep = on_disk & in_view
    if not keep.any():
        raise MetadataError(
            f"{source}: no rows left after filtering ({int(on_disk.sum())} of {len(meta)} rows have an image, "
            f"{int((on_disk & in_view).sum())} of those in views {list(views)})")
    kept = meta.loc[keep, [c for c in _KEEP if c in meta.columns]]
    table = pd.concat([kept, multi_hot(meta.loc[keep, "Finding Labels"])], axis=1)
    table = table.sort_values("Image Index").reset_index(drop=True)
    report = {
        "rows_in_metadata": int(len(meta)),
        "images_on_disk": len(present),
        "dropped_no_image": int((~on_disk).sum()),
        "dropped_view": int((on_disk & ~in_view).sum()),
        "images_not_in_metadata": len(present - listed),
        "impossible_ages_set_missing": int(meta.attrs.get("impossible_ages", 0)),
        "rows": int(len(table)),
        "patients": int(table["Patient ID"].nunique()),
    }
    return table, report


def class_counts(table: pd.DataFrame) -> dict[str, int]:
    """Positives per label column."""
    return {name: int(table[name].sum()) for name in LABEL_COLUMNS}


def decision_prevalence(meta: pd.DataFrame, views: Iterable[str], targets: Sequence[str], decision: Decision) -> float:
    """The decision's share of every metadata row in ``views`` (all of NIH with the official
    metadata): the prevalence the enriched bundled sample is not. A single-label task counts
    the rows that belong to exactly one class, as relabel keeps them."""
    table = multi_hot(meta.loc[meta["View Position"].isin(tuple(views)), "Finding Labels"])
    if decision.exclusive:
        table, _ = single_class(table, targets)
    return float(decision.truth(table[list(targets)].to_numpy()).mean())
