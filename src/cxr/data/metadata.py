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
# Subgroups evaluate reports AUROC for: age bands in years (<40, 40-60 inclusive, >60),
# named so they are also valid MLflow metric keys.
AGE_BANDS = ("under_40", "40_to_60", "over_60")
SUBGROUP_COLUMNS = {"sex": "Patient Gender", "age": "Patient Age", "view": "View Position"}
# Google's 2019 radiologist-adjudicated labels (Majkowska et al., Radiology 2020), each with the
# NIH findings a model's score for it combines. Airspace opacity <- Consolidation, Infiltration,
# Pneumonia is this project's reading of the NIH names, not a published mapping; NIH has no fracture.
EXPERT_FINDINGS = {
    "Fracture": (),
    "Pneumothorax": ("Pneumothorax",),
    "Airspace opacity": ("Consolidation", "Infiltration", "Pneumonia"),
    "Nodule or mass": ("Nodule", "Mass"),
}
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


def age_band(ages) -> np.ndarray:
    """The ``AGE_BANDS`` name of each age in years; ``''`` for a missing age."""
    ages = np.asarray(ages, dtype=np.float64)
    return np.select([ages < 40, ages <= 60, ages > 60], AGE_BANDS, default="").astype(object)


def subgroups(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each image's subgroup per attribute of ``SUBGROUP_COLUMNS`` (sex, age band, view
    position), ``''`` where the metadata does not say."""
    out = {}
    for name, column in SUBGROUP_COLUMNS.items():
        values = table[column] if column in table.columns else pd.Series("", index=table.index)
        out[name] = age_band(values) if name == "age" else values.fillna("").astype(str).to_numpy(dtype=object)
    return out


def read_expert_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Google 2019's adjudicated labels: one 0/1 column per ``EXPERT_FINDINGS``, indexed by
    ``Image Index``. Raises ``MetadataError`` naming the file for a missing column or a
    value other than ``YES``/``NO``."""
    try:
        raw = pd.read_csv(path, dtype=str)
    except FileNotFoundError:
        raise MetadataError(f"{path}: not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise MetadataError(f"{path}: not a readable CSV ({first_line(e)})") from None
    for column in ("Image Index", *EXPERT_FINDINGS):
        if column not in raw.columns:
            raise MetadataError(f"{path}: missing column {column!r} (expected Google 2019's expert label file)")
    out = raw.set_index("Image Index")[list(EXPERT_FINDINGS)]
    bad = ~out.isin(["YES", "NO"])
    if bad.any().any():
        column = out.columns[bad.any()][0]
        raise MetadataError(f"{path}: column {column!r} has {out[column][bad[column]].iloc[0]!r}; expected YES or NO")
    if out.index.duplicated().any():
        raise MetadataError(f"{path}: image {out.index[out.index.duplicated()][0]!r} is listed twice")
    return (out == "YES").astype(np.uint8)


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
