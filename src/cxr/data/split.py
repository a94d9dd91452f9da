"""Patient-aware splits. No patient is ever in two splits.

Stratification is at patient level: each patient falls in the stratum of its
rarest finding (by number of patients), and within every stratum patients are
taken in a seeded random order until the stratum's share of *images* is met.
That keeps image fractions close to the requested ones even though patients
have 1 to ~180 images, and puts positives of every finding with enough
patients in every split.
"""
from __future__ import annotations

from cxr.errors import CxrError

from collections.abc import Iterable

import numpy as np
import pandas as pd

from cxr.data.labels import LABEL_COLUMNS, multi_hot
from cxr.data.metadata import FINDINGS, subgroups

SPLITS = ("train", "val", "test")


class SplitError(CxrError):
    """A split that cannot be made or that leaks patients."""


def _findings(df: pd.DataFrame) -> np.ndarray:
    if all(f in df.columns for f in FINDINGS):
        return df[list(FINDINGS)].to_numpy(dtype=bool)
    if "Finding Labels" in df.columns:
        return multi_hot(df["Finding Labels"])[list(FINDINGS)].to_numpy(dtype=bool)
    raise SplitError("split: table has neither finding columns nor 'Finding Labels'")


def _take_fraction(patient_images: np.ndarray, strata: np.ndarray, fraction: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Boolean mask over patients: about ``fraction`` of each stratum's images."""
    order = rng.permutation(len(patient_images))
    order = order[np.argsort(strata[order], kind="stable")]
    n = patient_images[order].astype(float)
    s = strata[order]
    frame = pd.DataFrame({"s": s, "n": n})
    cum = frame.groupby("s")["n"].cumsum().to_numpy()
    total = frame.groupby("s")["n"].transform("sum").to_numpy()
    # A patient goes in when the middle of its images falls inside the share:
    # unbiased rounding, so small strata are not all pulled into one split.
    taken_sorted = (cum - n / 2) < fraction * total
    taken = np.empty_like(taken_sorted)
    taken[order] = taken_sorted
    return taken


def _patient_table(df: pd.DataFrame) -> tuple[pd.Index, np.ndarray, np.ndarray, np.ndarray]:
    """Patients (sorted), row -> patient position, images per patient, stratum per patient."""
    if "Patient ID" not in df.columns:
        raise SplitError("split: table has no 'Patient ID' column")
    codes, patients = pd.factorize(df["Patient ID"], sort=True)
    images = np.bincount(codes, minlength=len(patients))
    findings = _findings(df)
    per_patient = pd.DataFrame(findings).groupby(codes).max().to_numpy(dtype=bool)
    frequency = per_patient.sum(axis=0)
    # Rarest finding first; patients with no finding get stratum len(FINDINGS).
    rank = np.argsort(np.argsort(frequency, kind="stable"), kind="stable")
    ranked = np.where(per_patient, rank[None, :], len(FINDINGS))
    strata = ranked.min(axis=1)
    return patients, codes, images, strata


def _check_nonempty(split: pd.Series, df: pd.DataFrame, names: Iterable[str]) -> None:
    for name in names:
        if not (split == name).any():
            raise SplitError(
                f"split: '{name}' would have no patients ({df['Patient ID'].nunique()} patients, "
                f"{len(df)} images in all); use more data or change split.test_size / split.val_size")


def patient_split(df: pd.DataFrame, test_size: float = 0.2, val_size: float = 0.2,
                  seed: int = 0) -> pd.Series:
    """Assign every row to ``'train'``, ``'val'`` or ``'test'`` by patient.

    ``test_size`` of the images go to test, then ``val_size`` of the rest to
    val (so 0.64 / 0.16 / 0.20 by default). Deterministic for a seed. ``df``
    needs ``Patient ID`` and either ``Finding Labels`` or the finding columns.
    """
    for name, value in (("test_size", test_size), ("val_size", val_size)):
        if not 0 < value < 1:
            raise SplitError(f"split: {name} must be in (0, 1), got {value!r}")
    rng = np.random.default_rng(seed)
    _, codes, images, strata = _patient_table(df)
    test = _take_fraction(images, strata, test_size, rng)
    rest = np.flatnonzero(~test)
    val = np.zeros_like(test)
    val[rest] = _take_fraction(images[rest], strata[rest], val_size, rng)
    per_patient = np.where(test, "test", np.where(val, "val", "train"))
    split = pd.Series(per_patient[codes], index=df.index, name="split")
    _check_nonempty(split, df, SPLITS)
    return split


def official_split(df: pd.DataFrame, test_images: Iterable[str], val_size: float = 0.2,
                   seed: int = 0) -> pd.Series:
    """NIH's official split: test = ``test_list.txt``; val carved by patient from the rest."""
    rng = np.random.default_rng(seed)
    is_test = df["Image Index"].isin(set(test_images)).to_numpy()
    split = pd.Series(np.where(is_test, "test", "train"), index=df.index, name="split", dtype=object)
    rest = df.loc[~is_test]
    if len(rest):
        _, codes, images, strata = _patient_table(rest)
        val = _take_fraction(images, strata, val_size, rng)
        split.loc[rest.index] = np.where(val[codes], "val", "train")
    if not is_test.any():
        raise SplitError(
            "split: official test list matches none of the images (the bundled sample holds only "
            "train_val images); use split.method: patient")
    _check_nonempty(split, df, SPLITS)
    assert_patient_disjoint(df["Patient ID"], split)
    return split


def leaking_patients(patients: pd.Series, split: pd.Series) -> pd.Index:
    """Patients with images in more than one split."""
    per_patient = pd.DataFrame({"p": patients.to_numpy(), "s": split.to_numpy()}).groupby("p")["s"].nunique()
    return per_patient.index[per_patient > 1]


def assert_patient_disjoint(patients: pd.Series, split: pd.Series) -> None:
    """Raise ``SplitError`` if any patient has images in two splits."""
    leaked = leaking_patients(patients, split)
    if len(leaked):
        raise SplitError(f"split: patient {leaked[0]} is in more than one split ({len(leaked)} leaking patients)")


def split_summary(table: pd.DataFrame, split: pd.Series) -> dict:
    """Images, patients, positives per label and images per subgroup (sex, age band, view) per split."""
    groups = subgroups(table)
    out = {}
    for name in SPLITS:
        mask = (split == name).to_numpy()
        part = table[mask]
        out[name] = {
            "images": int(len(part)),
            "patients": int(part["Patient ID"].nunique()),
            "fraction": round(len(part) / len(table), 4),
            "positives": {c: int(part[c].sum()) for c in LABEL_COLUMNS if c in part.columns},
            "subgroups": {attribute: {str(k): int(v) for k, v in
                                      sorted(pd.Series(values[mask]).replace("", "unknown").value_counts().items())}
                          for attribute, values in groups.items()},
        }
    return out
