"""train@<variant>: fit one model variant on the cached train split, log the run to MLflow."""
import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxr import compute, tracking  # noqa: E402
from cxr.errors import run_stage  # noqa: E402
from cxr.data.cache import cache_sha256  # noqa: E402
from cxr.features import feature_key, load_features, wanted  # noqa: E402
from cxr.models import check_weights  # noqa: E402
from cxr.outputs import atomic_path, write_json  # noqa: E402
from cxr.params import ModelParams, load_variant  # noqa: E402
from cxr.paths import (CACHE, DATA_STAGE_METRICS, LABELS, MODEL_INFO, SPLITS, features_dir, model_dir,  # noqa: E402
                       model_file, stage_metrics, timings, variant_reports)



def main() -> None:
    variant, params = load_variant(description=__doc__)
    model_params = params.model(variant)
    # Fail fast, before data loading or TensorFlow start-up.
    if isinstance(model_params, ModelParams):
        check_weights(model_params.weights, model_params.family, f"params.yaml: models.{variant}.weights")
    uri = tracking.tracking_uri()
    tracking.check_tracking_uri(uri)
    compute.configure(params.compute)

    from cxr import calibrate, train
    from cxr.evaluate import BOOTSTRAP_ROUNDS, decision_auroc, is_collapsed, mean_auroc_interval, prediction_spread
    from cxr.data.dataset import load_dataset
    from cxr.plots import plot_history

    strategy, worker = None, None
    if params.train.distribute == "mirrored":
        import tensorflow as tf
        strategy = tf.distribute.MirroredStrategy(train.split_cpu(2))
    elif params.train.distribute == "multi_worker":
        import tensorflow as tf
        worker = train.cluster_worker()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()  # joins the cluster TF_CONFIG names

    dataset = load_dataset(CACHE, LABELS, SPLITS, params.labels.targets)
    chief = worker is None or worker.chief
    use_features = wanted(model_params, params.train.feature_cache) is None  # the frozen epochs fit the head on them
    # The features' key and the chief's data version need the cache's digest: one read of images.npy, once.
    cache_sha = cache_sha256(CACHE) if use_features or chief else None
    features = None
    if use_features:
        features = load_features(features_dir(variant), feature_key(
            model_params, params.image.size, cache_sha, params.compute, params.train.seed))
    if not chief:
        # Trains its shard in step with the others; the chief saves the model and logs the run.
        result = train.train_model(dataset, model_params, params.train, params.image.size, name=variant,
                                   strategy=strategy, decision=params.labels.decision, features=features)
        calibrate.fold(result.model, calibrate.fit(dataset.splits["val"].y, result.val_predictions,
                                                   params.train.calibration, params.labels.exclusive))
        print(f"train@{variant}: worker {worker.index} of {worker.workers} done after {result.epochs_run} epochs "
              f"(weights sha256 {train.weights_sha256(result.model)}); the chief writes the model")
        return
    used = {"image": {"size": params.image.size},
            "labels": {"task": params.labels.task, "target": params.labels.target,
                       "classes": list(params.labels.classes)},
            "train": dataclasses.asdict(params.train), "model": dataclasses.asdict(model_params)}
    data_sha = tracking.data_sha256(SPLITS, LABELS, cache_sha)
    history_csv = stage_metrics("train", variant, "_history.csv")
    # What the data stages measured (functions of the data hashed above), for the parent run of
    # this data version; only logged, so not deps.
    data_metrics = {stage: json.loads(Path(stage_metrics(stage)).read_text()) for stage in DATA_STAGE_METRICS
                    if Path(stage_metrics(stage)).is_file()}
    with tracking.training_run(variant, f"train@{variant}", used, data_sha, uri, data_metrics,
                               tags=train.devices()) as run:
        result = train.train_model(dataset, model_params, params.train, params.image.size, name=variant,
                                   callbacks=[run.epoch_callback()], strategy=strategy,
                                   decision=params.labels.decision, features=features)
        val = dataset.splits["val"]
        # Calibrated on val and folded into the saved model: every format downstream outputs calibrated scores.
        calibration = calibrate.fit(val.y, result.val_predictions, params.train.calibration, params.labels.exclusive)
        calibrate.fold(result.model, calibration)
        val_p = calibrate.apply(result.val_predictions, calibration)
        train.save_model(result.model, model_file(variant))
        write_json(f"{model_dir(variant)}/{MODEL_INFO}", {"variant": variant, "family": model_params.family,
                                               "targets": list(dataset.targets), "size": params.image.size,
                                               "calibration": calibration.as_dict()})
        with atomic_path(history_csv) as tmp:
            tmp.write_text(train.history_rows_to_csv(result.history))
        plot_path = plot_history(result.history, f"{variant_reports(variant)}/history.png", title=f"{variant}: training")
        decision = decision_auroc(params.labels.decision, val.y, val_p, val.patients, BOOTSTRAP_ROUNDS,
                                  params.train.seed)
        summary = {"best_epoch": result.best["epoch"], "train_loss": result.best["loss"],
                   "train_auroc": result.best["auroc"], "val_loss": result.best["val_loss"],
                   "val_auroc": result.best["val_auroc"],
                   "val_auroc_ci95": mean_auroc_interval(val.y, val_p, val.patients, BOOTSTRAP_ROUNDS,
                                                         params.train.seed),
                   # the yes/no score the bundle thresholds: what `cxr predict` picks its default by
                   "val_decision_auroc": decision["auroc"], "val_decision_auroc_ci95": decision["auroc_ci95"],
                   "val_prediction_spread": prediction_spread(result.val_predictions),
                   "collapsed": is_collapsed(result.val_predictions), "epochs_run": result.epochs_run,
                   "calibration": calibration.method,
                   "train_images": result.train_images, "val_images": len(val)}
        write_json(stage_metrics("train", variant), summary)
        # Timings are facts about this machine, not results: kept out of `dvc metrics`.
        timing = {"seconds": round(result.seconds, 2), "images_per_second": round(result.images_per_second, 1)}
        write_json(timings("train", variant), timing)
        run.finish(lambda mlflow: tracking.log_trained_model(
            mlflow, result.model, model_file(variant), {**summary, **timing},
            artifacts=[plot_path, history_csv]))
    collapsed = " COLLAPSED (near-constant predictions)" if summary["collapsed"] else ""
    print(f"train@{variant}: best epoch {summary['best_epoch']} of {summary['epochs_run']}, "
          f"val AUROC {summary['val_auroc']:.4f}, {timing['images_per_second']} images/s{collapsed}")


if __name__ == "__main__":
    run_stage(main, "train")
