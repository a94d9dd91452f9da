"""patient_split / official_split on real NIH metadata: no leakage, fractions, determinism."""
import gzip

import pandas as pd
import pytest

from conftest import BUNDLED, LOWRES
from cxr.data import FINDINGS, patient_split, read_metadata
from cxr.data.labels import multi_hot
from cxr.data.split import SplitError, assert_patient_disjoint, official_split


def _overlap(df, split):
    per_patient = pd.DataFrame({"p": df["Patient ID"], "s": split}).groupby("p")["s"].nunique()
    return int((per_patient > 1).sum())


def test_full_metadata_split_is_disjoint_and_sized(full_metadata):
    split = patient_split(full_metadata, test_size=0.2, val_size=0.2, seed=0)
    assert split.index.equals(full_metadata.index)
    assert set(split.unique()) == {"train", "val", "test"}
    assert _overlap(full_metadata, split) == 0
    fractions = split.value_counts(normalize=True)
    assert fractions["train"] == pytest.approx(0.64, abs=0.01)
    assert fractions["val"] == pytest.approx(0.16, abs=0.01)
    assert fractions["test"] == pytest.approx(0.20, abs=0.01)
    # Stratified: every finding has positives in every split on the full data.
    hot = multi_hot(full_metadata["Finding Labels"])
    for name in ("train", "val", "test"):
        assert (hot[split == name][list(FINDINGS)].sum() > 0).all()


def test_split_is_deterministic_per_seed(full_metadata):
    part = full_metadata.iloc[:20_000]
    a = patient_split(part, seed=7)
    assert a.equals(patient_split(part, seed=7))
    assert not a.equals(patient_split(part, seed=8))


def test_many_followups_per_patient_stay_together():
    """lowres: 677 real images of 246 patients, many follow-ups each."""
    df = read_metadata(LOWRES / "labels.csv")
    split = patient_split(df, seed=1)
    assert _overlap(df, split) == 0
    assert df["Patient ID"].value_counts().max() > 10


def test_official_split_uses_nih_test_list(full_metadata):
    with gzip.open(BUNDLED / "meta" / "test_list.txt.gz", "rt") as f:
        test_list = f.read().split()
    split = official_split(full_metadata, test_list, val_size=0.2, seed=0)
    assert (split == "test").sum() == 25_596
    assert set(full_metadata.loc[split == "test", "Image Index"]) == set(test_list)
    assert _overlap(full_metadata, split) == 0
    assert (split == "val").mean() == pytest.approx(0.2 * 86_524 / 112_120, abs=0.01)


def test_official_split_on_bundled_sample_is_a_clear_error(full_metadata):
    with gzip.open(BUNDLED / "meta" / "test_list.txt.gz", "rt") as f:
        test_list = f.read().split()
    names = {p.name for p in (BUNDLED / "images").glob("*.png")}
    sample = full_metadata[full_metadata["Image Index"].isin(names)]
    with pytest.raises(SplitError, match="use split.method: patient"):
        official_split(sample, test_list)


def test_too_few_patients_is_a_clear_error(full_metadata):
    two_patients = full_metadata[full_metadata["Patient ID"].isin([1, 2])]
    with pytest.raises(SplitError, match="would have no patients"):
        patient_split(two_patients)


def test_leak_check_catches_a_shared_patient():
    patients = pd.Series([1, 1, 2])
    with pytest.raises(SplitError, match="patient 1 is in more than one split"):
        assert_patient_disjoint(patients, pd.Series(["train", "test", "val"]))


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5])
def test_sizes_out_of_range(full_metadata, bad):
    with pytest.raises(SplitError, match="test_size"):
        patient_split(full_metadata.iloc[:100], test_size=bad)


def test_split_summary_counts_each_splits_images_by_sex_age_band_and_view(full_metadata):
    from cxr.data.split import split_summary
    table = pd.concat([full_metadata, multi_hot(full_metadata["Finding Labels"])], axis=1)
    with gzip.open(BUNDLED / "meta" / "test_list.txt.gz", "rt") as f:
        split = official_split(table, f.read().split(), 0.2, 0)
    summary = split_summary(table, split)
    assert summary["test"]["subgroups"]["view"] == {"AP": 14_500, "PA": 11_096}   # NIH's official test list
    for name in ("train", "val", "test"):
        for counts in summary[name]["subgroups"].values():
            assert sum(counts.values()) == summary[name]["images"]
    assert "unknown" not in summary["test"]["subgroups"]["age"]   # the v2020 metadata has every age
