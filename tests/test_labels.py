"""Multi-hot and binary targets on real rows."""
import pytest

from cxr.data import FINDINGS, NO_FINDING
from cxr.data.labels import ABNORMAL, build_labels, multi_hot
from cxr.data.metadata import MetadataError


def test_multi_hot_matches_finding_strings(full_metadata):
    hot = multi_hot(full_metadata["Finding Labels"])
    for name in FINDINGS:
        assert hot[name].sum() == full_metadata["Finding Labels"].str.split("|").map(lambda s: name in s).sum()
    no_finding = full_metadata["Finding Labels"] == NO_FINDING
    assert (hot[NO_FINDING] == no_finding.astype(int)).all()
    assert (hot[ABNORMAL] == 1 - hot[NO_FINDING]).all()
    assert hot[ABNORMAL].sum() == 51_759  # real count of images with any finding


def test_build_labels_filters_missing_images_and_views(full_metadata):
    present = list(full_metadata["Image Index"].iloc[:1000]) + ["not_listed.png"]
    table, report = build_labels(full_metadata, ["PA"], present)
    assert report["dropped_no_image"] == 112_120 - 1000
    assert report["images_not_in_metadata"] == 1
    assert report["dropped_view"] == int((full_metadata["View Position"].iloc[:1000] == "AP").sum())
    assert (table["View Position"] == "PA").all()
    assert len(table) == report["rows"] == 1000 - report["dropped_view"]


def test_empty_after_filtering_is_a_clear_error(full_metadata):
    with pytest.raises(MetadataError, match="no rows left after filtering"):
        build_labels(full_metadata, ["PA"], ["nothing_here.png"])
