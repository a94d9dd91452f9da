"""Grad-CAM bookkeeping of the evaluate stage: the real NIH boxes, which images are explained,
and how much heat lands in the radiologists' boxes."""
import numpy as np
import pandas as pd
import pytest

from conftest import BUNDLED
from cxr.gradcam import BOX_COLUMNS, GradCamError, choose_heatmap_images, localization, read_boxes

BOXES = BUNDLED / "meta" / "BBox_List_2017.csv.gz"


def test_real_nih_box_file_reads_with_its_empty_columns_dropped():
    boxes = read_boxes(BOXES)
    assert list(boxes.columns) == BOX_COLUMNS
    assert len(boxes) == 984  # NIH's 984 radiologist boxes
    assert boxes[["x", "y", "w", "h"]].notna().all().all() and (boxes["w"] > 0).all()


def test_box_file_with_too_few_columns_is_one_line(tmp_path):
    (tmp_path / "boxes.csv").write_text("Image Index,Finding Label\na.png,Mass\n")
    with pytest.raises(GradCamError, match=r"boxes.csv: expected 6 columns .* got 2$"):
        read_boxes(tmp_path / "boxes.csv")


def test_boxed_images_come_first_then_a_seeded_order():
    names = [f"{i:03d}.png" for i in range(20)]
    boxed = {"005.png", "017.png"}
    chosen = choose_heatmap_images(names, boxed, 6, seed=3)
    assert chosen[:2] == [5, 17] and len(set(chosen)) == 6
    assert chosen == choose_heatmap_images(names, boxed, 6, seed=3)
    assert chosen[2:] != choose_heatmap_images(names, boxed, 6, seed=4)[2:]
    assert choose_heatmap_images(names, boxed, 0, seed=3) == []
    assert len(choose_heatmap_images(names, boxed, 50, seed=3)) == 20


def test_localization_scores_every_box_of_the_explained_images():
    boxes = pd.DataFrame([("a.png", "Mass", 0, 0, 512, 512), ("a.png", "Nodule", 512, 512, 512, 512),
                          ("b.png", "Mass", 0, 0, 1024, 1024), ("c.png", "Mass", 0, 0, 100, 100)],
                         columns=BOX_COLUMNS)
    cam = np.zeros((8, 8))
    cam[:4, :4] = 1.0                      # all heat in the top-left quarter
    result = localization({"a.png": cam, "b.png": np.ones((8, 8))}, boxes)
    assert result["heatmaps"] == 2 and result["boxes_scored"] == 3   # c.png was not explained
    assert result["mean_heat_in_box"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert localization({}, boxes)["mean_heat_in_box"] is None
