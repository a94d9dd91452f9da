"""Reading NIH ChestX-ray14 metadata in every real format it ships in.

Formats seen in the wild:
- Kaggle ``Data_Entry_2017.csv``: 11 columns plus an empty trailing one
  (pandas names it ``Unnamed: 11``); ``OriginalImage[Width,Height]`` splits
  into ``OriginalImage[Width`` and ``Height]`` because the header is unquoted.
- NIH ``Data_Entry_2017_v2020.csv``: the same 11 columns, no trailing one.
- Kaggle sample ``sample_labels.csv``: ``OriginalImageWidth``-style names and
  ages written as ``060Y``.
All are normalized to the Kaggle ``Data_Entry_2017.csv`` header.
"""
from __future__ import annotations

from cxr.errors import CxrError, first_line

import os
import re

import numpy as np
import pandas as pd

FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
    "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema",
    "Fibrosis", "Pleural_Thickening", "Hernia",
)
NO_FINDING = "No Finding"

COLUMNS = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
    "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
    "OriginalImagePixelSpacing[x", "y]",
)
REQUIRED = ("Image Index", "Finding Labels", "Patient ID")
_ALIASES = {
    "OriginalImageWidth": "OriginalImage[Width",
    "OriginalImageHeight": "Height]",
    "OriginalImagePixelSpacing_x": "OriginalImagePixelSpacing[x",
    "OriginalImagePixelSpacing_y": "y]",
}
MAX_AGE = 120
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMD]?)\s*$", re.IGNORECASE)
_AGE_UNIT = {"": 1.0, "Y": 1.0, "M": 1 / 12, "D": 1 / 365.25}


class MetadataError(CxrError):
    """Metadata that cannot be used; the message names the file and the problem."""


def parse_age(value) -> float:
    """Age in years from ``58``, ``'058Y'``, ``'005M'`` or ``'012D'``; NaN if unreadable."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    m = _AGE.match(str(value))
    return float(m.group(1)) * _AGE_UNIT[m.group(2).upper()] if m else float("nan")


def normalize_metadata(df: pd.DataFrame, source: str = "metadata") -> pd.DataFrame:
    """Normalize column names and values, and validate; see ``read_metadata``."""
    df = df.rename(columns=lambda c: _ALIASES.get(str(c).strip(), str(c).strip()))
    empty_extra = [c for c in df.columns if c.startswith("Unnamed:") and df[c].isna().all()]
    df = df.drop(columns=empty_extra)
    for col in REQUIRED:
        if col not in df.columns:
            raise MetadataError(f"{source}: missing required column '{col}' (has: {', '.join(df.columns)})")
    if df.empty:
        raise MetadataError(f"{source}: no rows")

    df = df.copy()
    df["Image Index"] = df["Image Index"].astype(str).str.strip()
    dup = df["Image Index"][df["Image Index"].duplicated()]
    if len(dup):
        raise MetadataError(f"{source}: duplicate 'Image Index' {dup.iloc[0]!r} ({len(dup)} duplicates)")

    pid = df["Patient ID"]
    missing_pid = pid.isna() | (pid.astype(str).str.strip() == "")
    if missing_pid.any():
        row = df.loc[missing_pid, "Image Index"].iloc[0]
        raise MetadataError(f"{source}: empty 'Patient ID' for {row!r} ({int(missing_pid.sum())} rows)")
    pid = pid.astype(str).str.strip()
    # Real IDs are integers (as pandas reads the Kaggle file); keep other IDs as text.
    df["Patient ID"] = pid.astype("int64") if pid.str.fullmatch(r"\d+").all() else pid

    df["Finding Labels"] = df["Finding Labels"].fillna("").astype(str).str.strip()
    seen = set()
    for labels in df["Finding Labels"].unique():
        seen.update(labels.split("|"))
    unknown = sorted(seen - set(FINDINGS) - {NO_FINDING})
    if unknown:
        raise MetadataError(
            f"{source}: unknown finding name {unknown[0]!r} in 'Finding Labels' "
            f"(expected '{NO_FINDING}' or {', '.join(FINDINGS)})")

    impossible = 0
    if "Patient Age" in df.columns:
        age = df["Patient Age"].map(parse_age)
        bad = age > MAX_AGE
        impossible = int(bad.sum())
        df["Patient Age"] = age.mask(bad)
    df.attrs["impossible_ages"] = impossible
    ordered = [c for c in COLUMNS if c in df.columns]
    return df[ordered + [c for c in df.columns if c not in COLUMNS]].reset_index(drop=True)


def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """Read ChestX-ray14 metadata (Kaggle or NIH v2020 format, optionally gzipped).

    Returns a DataFrame with the Kaggle header (``Image Index``, ``Finding
    Labels``, ``Follow-up #``, ``Patient ID``, ``Patient Age``, ...), integer
    Patient IDs (text if not numeric), and ages in years as floats; ages
    over 120 (real data errors) become NaN and are counted in
    ``df.attrs['impossible_ages']``. Raises ``MetadataError`` naming the file
    for a missing required column, a duplicate image, an empty patient ID or
    an unknown finding name.
    """
    try:
        raw = pd.read_csv(path, dtype={"Patient ID": str, "Image Index": str})
    except FileNotFoundError:
        raise MetadataError(f"{path}: not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise MetadataError(f"{path}: not a readable CSV ({first_line(e)})") from None
    return normalize_metadata(raw, str(path))
