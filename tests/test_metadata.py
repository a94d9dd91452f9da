"""read_metadata on the real NIH metadata, in both real formats, and its errors."""
import gzip

import pandas as pd
import pytest

from conftest import FULL_METADATA
from cxr.data import FINDINGS, read_metadata
from cxr.data.metadata import COLUMNS, MetadataError, parse_age


def test_v2020_file_reads_all_rows_with_kaggle_header(full_metadata):
    assert len(full_metadata) == 112_120
    assert list(full_metadata.columns) == list(COLUMNS)
    assert full_metadata["Image Index"].is_unique
    assert full_metadata["Patient ID"].nunique() == 30_805
    assert full_metadata["Patient ID"].dtype == "int64"


def _kaggle_copy(tmp_path, rows: pd.DataFrame):
    """The Kaggle Data_Entry_2017.csv layout: 11 columns plus an empty trailing one."""
    path = tmp_path / "Data_Entry_2017.csv"
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")
    body = rows.to_csv(header=False, index=False, lineterminator=",\n")
    path.write_text(header + body)
    return path


def test_kaggle_format_gives_same_table_and_clears_impossible_ages(tmp_path):
    with gzip.open(FULL_METADATA, "rt") as f:
        raw = pd.read_csv(f, nrows=300)
    raw.loc[5, "Patient Age"] = 414  # the 2017 Kaggle file holds ages like this
    path = _kaggle_copy(tmp_path, raw)
    assert "Unnamed: 11" in pd.read_csv(path).columns
    df = read_metadata(path)
    assert list(df.columns) == list(COLUMNS)
    assert df.attrs["impossible_ages"] == 1
    assert pd.isna(df.loc[5, "Patient Age"])
    v2020 = read_metadata(FULL_METADATA).iloc[:300]
    pd.testing.assert_frame_equal(df.drop(index=5), v2020.drop(index=5), check_dtype=False)


def test_kaggle_sample_labels_format(tmp_path):
    """sample_labels.csv: OriginalImageWidth-style headers and ages like '060Y'."""
    with gzip.open(FULL_METADATA, "rt") as f:
        raw = pd.read_csv(f, nrows=50)
    raw.columns = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                   "View Position", "OriginalImageWidth", "OriginalImageHeight",
                   "OriginalImagePixelSpacing_x", "OriginalImagePixelSpacing_y"]
    raw["Patient Age"] = raw["Patient Age"].map(lambda a: f"{a:03d}Y")
    raw.to_csv(tmp_path / "sample_labels.csv", index=False)
    df = read_metadata(tmp_path / "sample_labels.csv")
    assert list(df.columns) == list(COLUMNS)
    assert df["Patient Age"].iloc[0] == 57.0


@pytest.mark.parametrize("value,years", [(58, 58.0), ("058Y", 58.0), ("006M", 0.5), ("x", None)])
def test_parse_age(value, years):
    got = parse_age(value)
    assert (pd.isna(got) if years is None else got == pytest.approx(years))


@pytest.fixture
def rows():
    with gzip.open(FULL_METADATA, "rt") as f:
        return pd.read_csv(f, nrows=20)


@pytest.mark.parametrize("breakage,message", [
    (lambda d: d.drop(columns=["Patient ID"]), "missing required column 'Patient ID'"),
    (lambda d: pd.concat([d, d.iloc[[3]]]), "duplicate 'Image Index' '00000002_000.png'"),
    (lambda d: d.assign(**{"Finding Labels": d["Finding Labels"].where(d.index != 2, "Cardiomegally")}),
     "unknown finding name 'Cardiomegally'"),
    (lambda d: d.assign(**{"Patient ID": d["Patient ID"].astype(object).where(d.index != 4, None)}),
     "empty 'Patient ID'"),
    (lambda d: d.iloc[0:0], "no rows"),
])
def test_bad_metadata_gives_one_line_error_naming_file(tmp_path, rows, breakage, message):
    path = tmp_path / "meta.csv"
    breakage(rows).to_csv(path, index=False)
    with pytest.raises(MetadataError) as e:
        read_metadata(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_not_a_csv(tmp_path):
    path = tmp_path / "meta.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    with pytest.raises(MetadataError, match="meta.csv"):
        read_metadata(path)


def test_finding_names_are_the_fourteen():
    assert len(FINDINGS) == 14 and "Pleural_Thickening" in FINDINGS


def test_age_bands_put_40_and_60_in_the_middle_band_and_leave_unknown_ages_out():
    from cxr.data.metadata import age_band
    assert list(age_band([0.5, 39.9, 40, 60, 60.1, 94, float("nan")])) == [
        "under_40", "under_40", "40_to_60", "40_to_60", "over_60", "over_60", ""]


def test_subgroups_of_the_real_metadata_leave_out_only_impossible_ages(full_metadata):
    from cxr.data.metadata import normalize_metadata, subgroups
    rows = full_metadata.head(1000).copy()
    rows.loc[[3, 7], "Patient Age"] = [412, 150]     # as in the 2017 metadata, before NIH's v2020 fix
    rows = normalize_metadata(rows)
    groups = subgroups(rows)
    assert set(groups["sex"]) == {"F", "M"} and set(groups["view"]) == {"PA", "AP"}
    assert list(groups["age"][[3, 7]]) == ["", ""] and (groups["age"] != "").sum() == 998


def test_expert_labels_read_from_the_bundled_google_file():
    from conftest import BUNDLED
    from cxr.data.metadata import EXPERT_FINDINGS, read_expert_labels
    labels = read_expert_labels(BUNDLED / "meta" / "google2019_nih-chest-xray-labels.csv.gz")
    assert len(labels) == 4376 and list(labels.columns) == list(EXPERT_FINDINGS)
    assert labels.sum().to_dict() == {"Fracture": 186, "Pneumothorax": 238, "Airspace opacity": 2166,
                                      "Nodule or mass": 605}


def test_expert_label_file_errors_name_the_file_and_what_was_expected(tmp_path):
    from cxr.data.metadata import read_expert_labels
    from conftest import BUNDLED
    real = pd.read_csv(BUNDLED / "meta" / "google2019_nih-chest-xray-labels.csv.gz", dtype=str)
    bad = tmp_path / "labels.csv"
    real.assign(Pneumothorax=real["Pneumothorax"].where(real.index != 3, "maybe")).to_csv(bad, index=False)
    with pytest.raises(MetadataError, match=r"labels.csv: column 'Pneumothorax' has 'maybe'; expected YES or NO$"):
        read_expert_labels(bad)
    real.drop(columns="Fracture").to_csv(bad, index=False)
    with pytest.raises(MetadataError, match=r"labels.csv: missing column 'Fracture'"):
        read_expert_labels(bad)
