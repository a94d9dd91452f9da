"""relabel: metadata -> data/labels.csv (multi-hot findings, No Finding, abnormal); for a
multiclass task only the images of exactly one class."""
from cxr.data.download import manifest_names
from cxr.data.labels import build_labels, class_counts, single_class
from cxr.data.metadata import read_metadata
from cxr.errors import run_stage
from cxr.outputs import write_csv, write_json
from cxr.params import load_params
from cxr.paths import LABELS, RAW, RAW_METADATA, stage_metrics

METRICS = stage_metrics("labels")


def main() -> None:
    params = load_params().labels
    table, report = build_labels(read_metadata(RAW_METADATA), params.views, manifest_names(RAW), RAW_METADATA)
    if params.task == "multiclass":
        table, report["single_class"] = single_class(table, params.classes)
        report.update(rows=int(len(table)), patients=int(table["Patient ID"].nunique()))
    counts = class_counts(table)
    write_csv(LABELS, table)
    write_json(METRICS, {**report, "positives": counts, "task": params.task,
                         "targets": {t: counts[t] for t in params.targets}})
    print(f"relabel: {report['rows']} images, {report['patients']} patients "
          f"({report['dropped_no_image']} rows without image, {report['dropped_view']} outside views "
          f"{list(params.views)})" + (f"; {report['single_class']['dropped_no_class']} of no class and "
                                      f"{report['single_class']['dropped_several_classes']} of several dropped"
                                      if "single_class" in report else ""))


if __name__ == "__main__":
    run_stage(main, "relabel")
