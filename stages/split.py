"""split: data/labels.csv -> data/splits.csv, patient-disjoint (asserted)."""
import gzip

import pandas as pd

from cxr.data.split import (assert_patient_disjoint, leaking_patients, official_split, patient_split,
                            split_summary)
from cxr.errors import run_stage
from cxr.outputs import write_csv, write_json
from cxr.params import load_params
from cxr.paths import DATA_REPORTS, LABELS, OFFICIAL_TEST, SPLITS, stage_metrics
from cxr.plots import plot_age_sex, plot_label_shares

METRICS = stage_metrics("split")


def main() -> None:
    params = load_params().split
    table = pd.read_csv(LABELS)
    if params.method == "official":
        with gzip.open(OFFICIAL_TEST, "rt") as f:
            test_images = f.read().split()
        split = official_split(table, test_images, params.val_size, params.seed)
    else:
        split = patient_split(table, params.test_size, params.val_size, params.seed)
    assert_patient_disjoint(table["Patient ID"], split)
    write_csv(SPLITS, pd.DataFrame({"Image Index": table["Image Index"], "Patient ID": table["Patient ID"],
                                    "split": split}))
    summary = split_summary(table, split)
    overlap = len(leaking_patients(table["Patient ID"], split))  # measured on what is written, not assumed
    write_json(METRICS, {"method": params.method, "patient_overlap": overlap, **summary})
    plot_label_shares(summary, f"{DATA_REPORTS}/labels_per_split.png", f"labels per split ({params.method} split)")
    plot_age_sex(table["Patient Age"], table["Patient Gender"], split, f"{DATA_REPORTS}/age_sex.png",
                 "age and sex per split")
    print("split: " + ", ".join(f"{k} {v['images']} images / {v['patients']} patients"
                                for k, v in summary.items()))


if __name__ == "__main__":
    run_stage(main, "split")
