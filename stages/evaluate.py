"""evaluate@<variant>: test-split metrics with CIs, a val-chosen threshold, plots, Grad-CAM."""
import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxr import compute, tracking  # noqa: E402
from cxr.errors import run_command  # noqa: E402
from cxr.outputs import atomic_path, write_csv, write_json  # noqa: E402
from cxr.params import load_variant  # noqa: E402

CACHE, LABELS, SPLITS = "data/cache", "data/labels.csv", "data/splits.csv"
BOXES = "data/sample/meta/BBox_List_2017.csv.gz"


def main() -> None:
    variant, params = load_variant(description=__doc__)
    ep = params.evaluate
    uri = tracking.tracking_uri()
    tracking.check_tracking_uri(uri)
    compute.configure(params.compute)

    from cxr import gradcam, plots
    from cxr.data.dataset import load_dataset
    from cxr.evaluate import evaluate_predictions, flat_metrics
    from cxr.train import MODEL_FILE, load_model, predict

    model_path = f"models/{variant}/{MODEL_FILE}"
    model = load_model(model_path)
    data = load_dataset(CACHE, LABELS, SPLITS, params.labels.targets)
    test, val = data.splits["test"], data.splits["val"]
    test_images = data.images("test")
    test_p, val_p = predict(model, test_images), predict(model, data.images("val"))
    result = evaluate_predictions(data.targets, test.y, test_p, test.patients, val.y, val_p,
                                  threshold=ep.threshold, beta=ep.beta, min_positives=ep.min_positives,
                                  bootstrap=ep.bootstrap, seed=ep.seed)
    metrics, curves = result["metrics"], result["curves"]
    out = f"reports/{variant}"
    truth, score, t = curves["truth"], curves["score"], curves["threshold"]

    # Plot data for `dvc plots`, and the same pictures as PNG.
    from sklearn.metrics import precision_recall_curve, roc_curve
    fpr, tpr, _ = roc_curve(truth, score)
    precision, recall, _ = precision_recall_curve(truth, score)
    write_csv(f"{out}/plots/roc.csv", pd.DataFrame({"fpr": fpr, "tpr": tpr}))
    write_csv(f"{out}/plots/pr.csv", pd.DataFrame({"recall": recall, "precision": precision}))
    write_csv(f"{out}/plots/calibration.csv", pd.DataFrame(curves["reliability"]))
    write_csv(f"{out}/plots/triage.csv", pd.DataFrame(curves["triage"]))
    names = np.array(["normal", "abnormal"])
    write_csv(f"{out}/plots/confusion.csv", pd.DataFrame({"actual": names[truth.astype(int)],
                                                         "predicted": names[(score >= t).astype(int)]}))
    pictures = [
        plots.plot_roc(test.y, test_p, list(data.targets), f"{out}/roc.png", f"{variant}: test ROC per class"),
        plots.plot_pr(truth, score, f"{out}/pr.png", f"{variant}: abnormal vs normal"),
        plots.plot_calibration(curves["reliability"], metrics["abnormal"]["ece"], f"{out}/calibration.png",
                               f"{variant}: calibration of the abnormal score"),
        plots.plot_triage(curves["triage"], t, f"{out}/triage.png", f"{variant}: triage"),
        plots.plot_confusion(metrics["abnormal"]["at_threshold"]["confusion"], f"{out}/confusion.png",
                             f"{variant}: at the val-chosen threshold"),
    ]

    # Grad-CAM on a seeded choice of test images, those with radiologist boxes first.
    boxes = pd.read_csv(BOXES).iloc[:, :6]  # the NIH file has empty trailing columns
    boxes.columns = ["Image Index", "Finding Label", "x", "y", "w", "h"]
    with_boxes = set(boxes["Image Index"])
    boxed = [i for i, n in enumerate(test.names) if n in with_boxes]
    rng = np.random.default_rng(ep.seed)
    others = [i for i in rng.permutation(len(test)) if test.names[i] not in with_boxes]
    chosen = (boxed + others)[: ep.heatmaps]
    localization = []
    with atomic_path(f"{out}/heatmaps") as tmp:
        tmp.mkdir()
        if chosen:
            cams = gradcam.grad_cam(model, test_images[chosen])
            for cam, i in zip(cams, chosen):
                name = test.names[i]
                gradcam.save_overlay(test_images[i], cam, tmp / name,
                                     f"{name}  abnormal score {score[i]:.2f}")
                for box in boxes[boxes["Image Index"] == name].itertuples():
                    localization.append(gradcam.heat_in_box(cam, (box.x, box.y, box.w, box.h)))
    scores = [s for s in localization if s is not None]
    metrics["localization"] = {"heatmaps": len(chosen), "boxes_scored": len(scores),
                               "mean_heat_in_box": float(np.mean(scores)) if scores else None,
                               "note": "boxes exist only for NIH official-test images"}
    write_json(f"metrics/eval/{variant}.json", metrics)
    tracking.log_evaluation(variant, model_path, flat_metrics(metrics), dataclasses.asdict(ep),
                            artifacts=pictures, uri=uri)
    a = metrics["abnormal"]
    mean = metrics["mean_auroc"]
    print(f"evaluate@{variant}: mean AUROC {mean if mean is None else round(mean, 4)} over "
          f"{metrics['mean_auroc_classes']} classes; abnormal AUROC {a['auroc']:.4f}, threshold "
          f"{a['at_threshold']['threshold']:.3f} ({a['threshold_method']} on val): sensitivity "
          f"{a['at_threshold']['sensitivity']:.3f}, specificity {a['at_threshold']['specificity']:.3f}")


if __name__ == "__main__":
    run_command(main, "evaluate")
