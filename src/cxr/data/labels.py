"""Targets from metadata: 14 multi-hot findings, ``No Finding`` and ``abnormal``."""
from __future__ import annotations

from collections.abc import Iterable

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
