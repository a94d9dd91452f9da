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


def test_single_class_keeps_images_of_exactly_one_class_and_counts_the_rest(full_metadata):
    from cxr.data.labels import single_class
    table, _ = build_labels(full_metadata, ["PA", "AP"], full_metadata["Image Index"])
    classes = ["No Finding", "Infiltration", "Effusion"]
    kept, report = single_class(table, classes)
    labels = full_metadata.set_index("Image Index").loc[kept["Image Index"], "Finding Labels"].str.split("|")
    # Each kept image has exactly one of the classes (other findings may come with it).
    assert labels.map(lambda found: sum(c in found for c in classes) == 1).all()
    both = full_metadata["Finding Labels"].str.split("|").map(lambda f: "Infiltration" in f and "Effusion" in f)
    assert report["dropped_several_classes"] == int(both.sum()) == 4_000   # real counts
    assert report["rows"] == 85_572
    assert report["dropped_no_class"] + report["dropped_several_classes"] + report["rows"] == 112_120
    assert len(kept) == report["rows"] and kept[classes].sum(axis=1).eq(1).all()
    with pytest.raises(MetadataError, match=r"^labels.classes \['Hernia', 'Hernia'\]: none of the 3 images"):
        single_class(table.head(3).assign(Hernia=1), ["Hernia", "Hernia"])
