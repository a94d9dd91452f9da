"""evaluate@<variant>: test-split metrics with CIs, a val-chosen threshold, plots, heatmaps."""
import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from cxr import compute, tracking  # noqa: E402
from cxr.errors import run_stage  # noqa: E402
from cxr.outputs import atomic_path, file_sha256, write_csv, write_json  # noqa: E402
from cxr.params import load_variant  # noqa: E402
from cxr.paths import (BOXES, CACHE, EXPERT_LABELS, LABELS, MODEL_INFO, OFFICIAL_METADATA, SPLITS,  # noqa: E402
                       model_dir, model_file, stage_metrics, variant_reports)



def main() -> None:
    variant, params = load_variant(description=__doc__)
    ep = params.evaluate
    uri = tracking.tracking_uri()
    tracking.check_tracking_uri(uri)
    compute.configure(params.compute)

    import pandas as pd

    from cxr import calibrate, gradcam, plots
    from cxr.data.dataset import load_dataset
    from cxr.data.labels import decision_prevalence
    from cxr.baselines import metadata_baselines
    from cxr.data.metadata import (AGE_BANDS, EXPERT_FINDINGS, read_expert_labels, read_metadata,
                                   subgroups)
    from cxr.evaluate import (bootstrap_weights, curve_tables, evaluate_predictions, expert_label_aurocs,
                              flat_metrics, subgroup_aurocs)
    from cxr.inference import load_model, predict

    model_path = model_file(variant)
    model = load_model(model_path)
    folded = calibrate.Calibration.from_dict(json.loads(Path(model_dir(variant), MODEL_INFO).read_text())["calibration"])
    data = load_dataset(CACHE, LABELS, SPLITS, params.labels.targets)
    test, val = data.splits["test"], data.splits["val"]
    test_images = data.images("test")
    test_p, val_p = predict(model, test_images), predict(model, data.images("val"))
    weights = bootstrap_weights(test.patients, ep.bootstrap, ep.seed)   # every interval below resamples these
    meta = read_metadata(OFFICIAL_METADATA)
    prevalence = (decision_prevalence(meta, params.labels.views, data.targets, params.labels.decision)
                  if ep.prevalence == "nih" else ep.prevalence)
    result = evaluate_predictions(data.targets, test.y, test_p, test.patients, val.y, val_p,
                                  threshold=ep.threshold, beta=ep.beta, min_positives=ep.min_positives,
                                  weights=weights, val_weights=bootstrap_weights(val.patients, ep.bootstrap, ep.seed),
                                  prevalence=prevalence, decision=params.labels.decision,
                                  uncalibrated=(calibrate.invert(val_p, folded), calibrate.invert(test_p, folded)))
    metrics, curves = result["metrics"], result["curves"]
    metrics[params.labels.decision.positive]["calibration"]["method"] = folded.method
    names = params.labels.decision.positive, params.labels.decision.negative   # e.g. abnormal, normal
    decision = metrics[names[0]]
    out = variant_reports(variant)
    truth, score, t = curves["truth"], curves["score"], curves["threshold"]

    for name, table in curve_tables(curves, names).items():   # plot data for `dvc plots`
        write_csv(f"{out}/plots/{name}.csv", table)
    pictures = [
        plots.plot_roc(test.y, test_p, list(data.targets), f"{out}/roc.png", f"{variant}: test ROC per class"),
        plots.plot_pr(truth, score, f"{out}/pr.png", f"{variant}: {names[0]} vs {names[1]}"),
        plots.plot_calibration(curves["reliability"], decision["ece"], f"{out}/calibration.png",
                               f"{variant}: calibration of the {names[0]} score", names[0],
                               decision["calibration"]["before"]),
        plots.plot_triage(curves["triage"], t, f"{out}/triage.png", f"{variant}: triage", names),
        plots.plot_confusion(decision["at_threshold"]["confusion"], f"{out}/confusion.png",
                             f"{variant}: at the val-chosen threshold", names),
    ]

    # Heatmaps of a seeded choice of test images, those with radiologist boxes first.
    boxes = gradcam.read_boxes(BOXES)
    chosen = gradcam.choose_heatmap_images(list(test.names), set(boxes["Image Index"]), ep.heatmaps, ep.seed)
    cams = {}
    with atomic_path(f"{out}/heatmaps") as tmp:
        tmp.mkdir()
        if chosen:
            method = gradcam.heatmap_method(model)
            for cam, i in zip(gradcam.heatmaps(model, test_images[chosen], params.labels.decision), chosen):
                cams[test.names[i]] = cam
                gradcam.save_overlay(test_images[i], cam, tmp / test.names[i],
                                     f"{test.names[i]}  {names[0]} score {score[i]:.2f}\n"
                                     f"{gradcam.caption(method, cam)}")
    metrics["localization"] = gradcam.localization(cams, boxes)
    # What age, sex and view alone predict, beside the model (no image); the model within each of them.
    test_table = pd.read_csv(LABELS, dtype={"Patient ID": str}).set_index("Image Index").loc[list(test.names)]
    decision["baselines"].update(metadata_baselines(
        meta, set(test.patients) | set(val.patients), params.labels.views, names[0],
        test_table, truth, weights, ep.seed, model_score=score))
    decision["subgroups"] = subgroup_aurocs(truth, score, subgroups(test_table), weights,
                                            levels={"sex": ["F", "M"], "age": AGE_BANDS, "view": params.labels.views})
    # A second opinion on the NLP labels: radiologists' adjudicated labels, where the test split has them.
    expert = read_expert_labels(EXPERT_LABELS)
    rated = [i for i, n in enumerate(test.names) if n in expert.index]
    metrics["expert_labels"] = expert_label_aurocs(
        {f: expert.loc[test.names[rated], f].to_numpy() for f in EXPERT_FINDINGS}, EXPERT_FINDINGS,
        data.targets, test.y[rated], test_p[rated], weights[:, rated], params.labels.exclusive)
    write_json(stage_metrics("eval", variant), metrics)
    tracking.log_model_stage("evaluate", variant, file_sha256([model_path]), flat_metrics(metrics),
                             dataclasses.asdict(ep), artifacts=pictures, uri=uri)
    a = decision
    mean = metrics["mean_auroc"]
    print(f"evaluate@{variant}: mean AUROC {mean if mean is None else round(mean, 4)} over "
          f"{metrics['mean_auroc_classes']} classes; {names[0]} AUROC {a['auroc']:.4f}, threshold "
          f"{a['at_threshold']['threshold']:.3f} ({a['threshold_method']} on val): sensitivity "
          f"{a['at_threshold']['sensitivity']:.3f}, specificity {a['at_threshold']['specificity']:.3f}")


if __name__ == "__main__":
    run_stage(main, "evaluate")
