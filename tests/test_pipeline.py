"""The DVC pipeline end to end in a temporary copy of the project."""
import io
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from conftest import edit_params, run


def _stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def _other_pixels_same_size(path: Path) -> None:
    """Rewrite a PNG with its top-left quarter black, padded by a text chunk to its old byte size: the
    download stage keeps an image of the expected size (as a resumed download does), so only its md5
    tells the change."""
    old = path.read_bytes()
    image = Image.open(path).convert("L")
    image.paste(0, (0, 0, image.width // 2, image.height // 2))
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    new = buf.getvalue()
    text = b"pad\0" + b" " * (len(old) - len(new) - 12 - 4)
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    path.write_bytes(new[:-12] + chunk + new[-12:])   # before IEND (its 12 bytes)
    assert len(path.read_bytes()) == len(old)


def _cache_row(project: Path, name: str) -> np.ndarray:
    index = pd.read_csv(project / "data" / "cache" / "index.csv")
    row = int(index.loc[index["Image Index"] == name, "row"].iloc[0])
    return np.array(np.load(project / "data" / "cache" / "images.npy", mmap_mode="r")[row])


def test_data_stages_end_to_end(project):
    out = run(["dvc", "repro", "resize", "split"], project).stdout
    assert {"download", "relabel", "split", "resize"} <= set(_stages_run(out))

    splits = pd.read_csv(project / "data" / "splits.csv")
    assert len(splits) == 557
    assert splits.groupby("Patient ID")["split"].nunique().max() == 1
    summary = json.loads((project / "metrics" / "split.json").read_text())
    for name, part in splits.groupby("split"):   # the summary describes the split file written
        assert summary[name]["images"] == len(part) and summary[name]["patients"] == part["Patient ID"].nunique()
    assert json.loads((project / "metrics" / "resize.json").read_text())["cached"] == 557

    again = run(["dvc", "repro", "resize", "split"], project).stdout
    assert _stages_run(again) == [] and "up to date" in again

    edit_params(project, lambda p: p["split"].update(seed=p["split"]["seed"] + 1))
    assert _stages_run(run(["dvc", "repro", "resize", "split"], project).stdout) == ["split"]

    # relabel and resize depend on download's manifest, not on the image folder: changed pixels
    # still reach the cache (and the unchanged labels stop the rerun before split).
    image = sorted((project / "data" / "raw" / "images").iterdir())[5]
    before, manifest = _cache_row(project, image.name), (project / "data" / "raw" / "images.md5").read_text()
    _other_pixels_same_size(image)
    assert set(_stages_run(run(["dvc", "repro", "resize", "split"], project).stdout)) == {"download", "relabel", "resize"}
    changed = set(manifest.splitlines()) ^ set((project / "data" / "raw" / "images.md5").read_text().splitlines())
    assert {line.split("  ")[1] for line in changed} == {image.name} and len(changed) == 2
    after, half = _cache_row(project, image.name), before.shape[0] // 2
    assert after[:half - 1, :half - 1].max() == 0 < before[:half - 1, :half - 1].max()
    assert np.array_equal(after[half + 1:], before[half + 1:])


def test_bad_param_stops_stage_with_one_line(project):
    text = (project / "params.yaml").read_text().replace("size: 128", "size: big")
    (project / "params.yaml").write_text(text)
    proc = run(["python", "stages/resize.py"], project, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "resize: params.yaml: image.size: expected an integer in [32, 1024], got 'big'"


def test_unreachable_tracking_server_fails_before_training(tiny_copy):
    model = tiny_copy / "models" / "cnn" / "model.keras"
    before = model.stat().st_mtime_ns
    proc = run(["python", "stages/train.py", "cnn"], tiny_copy, check=False,
               env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("train: MLFLOW_TRACKING_URI=http://127.0.0.1:9: tracking server unreachable")
    assert model.stat().st_mtime_ns == before   # not trained, not written


def test_offline_imagenet_weights_fail_at_stage_start(project):
    edit_params(project, lambda p: p["models"]["resnet50"].update(weights="imagenet"))
    proc = run(["python", "stages/train.py", "resnet50"], project, check=False)
    assert proc.returncode == 1
    assert "models.resnet50.weights: 'imagenet' weights need internet access" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the whole pipeline, run once small (the tiny_project fixture) ---

def test_every_stage_wrote_its_outputs(tiny_project):
    for variant in ("cnn", "mobilenet"):
        summary = json.loads((tiny_project / "metrics" / "train" / f"{variant}.json").read_text())
        assert summary["epochs_run"] == 1 and 0 <= summary["val_auroc"] <= 1
        assert (tiny_project / "models" / variant / "model.keras").is_file()
        info = json.loads((tiny_project / "models" / variant / "model.json").read_text())
        assert info["size"] == 32 and len(info["targets"]) == 14
        evaluation = json.loads((tiny_project / "metrics" / "eval" / f"{variant}.json").read_text())
        info_calibration = info["calibration"]
        assert info_calibration["method"] == "temperature" and len(info_calibration["scale"]) == 14
        assert evaluation["abnormal"]["calibration"]["before"]["ece"] >= 0
        for name in ("roc", "pr", "calibration", "triage", "confusion"):
            assert (tiny_project / "reports" / variant / f"{name}.png").is_file()
            assert (tiny_project / "reports" / variant / "plots" / f"{name}.csv").is_file()
        assert len(list((tiny_project / "reports" / variant / "heatmaps").iterdir())) == 2
        groups = evaluation["abnormal"]["subgroups"]
        assert [set(groups[a]) for a in ("sex", "age", "view")] == [{"F", "M"}, {"under_40", "40_to_60", "over_60"},
                                                                    {"PA", "AP"}]
        assert sum(g["images"] for g in groups["sex"].values()) == evaluation["test_images"]
        assert set(evaluation["expert_labels"]) == {"Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"}
    for picture in ("labels_per_split", "age_sex"):
        assert (tiny_project / "reports" / "data" / f"{picture}.png").stat().st_size > 10_000
    summary = (tiny_project / "reports" / "summary.md").read_text()
    assert all(re.search(rf"\| (\*\*)?{v}( \(flagged\)\*\*)? \|", summary) for v in ("cnn", "mobilenet"))
    assert "NOT measured here" in summary
    assert "AUROC by subgroup" in summary and "Expert labels (Google 2019" in summary
    assert "CheXNet" in summary and "Not for diagnosis" in summary and "TFLite int8" in summary


def test_mlflow_holds_the_data_each_variant_its_train_evaluate_export_and_the_registered_model(tiny_project):
    import mlflow
    import yaml
    from cxr.outputs import file_sha256

    mlflow.set_tracking_uri(f"sqlite:///{tiny_project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["cxr-pipeline"], output_format="list")
    # One parent run of the data, holding the data stages' metrics.
    [data_run] = [r for r in runs if r.data.tags["cxr.stage"] == "data"]
    split = json.loads((tiny_project / "metrics" / "split.json").read_text())
    assert data_run.data.metrics["split.test.images"] == split["test"]["images"]
    assert data_run.data.metrics["split.patient_overlap"] == 0 and data_run.data.metrics["resize.cached"] == 557
    assert data_run.data.metrics["labels.patients"] == 555
    training = [r for r in runs if r.data.tags["cxr.stage"].startswith("train@")]
    assert sorted(r.data.tags["cxr.variant"] for r in training) == ["cnn", "mobilenet"]
    assert {r.data.tags["mlflow.parentRunId"] for r in training} == {data_run.info.run_id}
    cnn = next(r for r in training if r.data.tags["cxr.variant"] == "cnn")
    assert cnn.data.params["model.family"] == "cnn" and cnn.data.params["image.size"] == "32"
    assert cnn.data.tags["cxr.stage"] == "train@cnn" and cnn.data.tags["cxr.data_sha256"] == data_run.data.tags[
        "cxr.data_sha256"]
    assert cnn.data.tags["git.commit"] == "unknown"  # the pipeline ran before the first commit
    assert cnn.data.tags["cxr.devices"] == "/device:CPU:0" and cnn.data.tags["cxr.gpus"] == "none"
    assert cnn.data.params["train.mixed_precision"] == "none"
    assert {"val_auroc", "best_val_auroc", "test_abnormal.auroc", "test_mean_auroc_classes",
            "export_tflite.int8.threshold"} <= set(cnn.data.metrics)
    children = {r.data.tags["cxr.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == cnn.info.run_id}
    assert set(children) == {"evaluate@cnn", "export@cnn"}
    evaluation, export = children["evaluate@cnn"], children["export@cnn"]
    assert float(evaluation.data.params["evaluate.threshold.sensitivity"]) == 0.9   # params.yaml's, nested
    assert evaluation.data.metrics["test_abnormal.auroc"] == cnn.data.metrics["test_abnormal.auroc"]
    assert export.data.params["export.tflite"] == "('fp32', 'fp16', 'int8')"
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(export.info.run_id, "export/export")}
    assert {"export/export/manifest.json", "export/export/model_int8.tflite", "export/export/model.keras",
            "export/export/model.mlpackage"} <= files
    # Registered under the variant's name, tagged with its training stage's dvc.lock entry.
    client = mlflow.MlflowClient()
    [version] = client.search_model_versions("name = 'cnn'")
    lock = yaml.safe_load((tiny_project / "dvc.lock").read_text())["stages"]["train@cnn"]
    [model_out] = [o for o in lock["outs"] if o["path"] == "models/cnn/model.keras"]
    assert version.tags["dvc.lock.model_md5"] == model_out["md5"] and version.tags["dvc.stage"] == "train@cnn"
    assert len(version.tags["dvc.lock.stage_sha256"]) == 64
    info = mlflow.models.get_model_info(f"models:/cnn/{version.version}")
    signature = (*info.signature.inputs.to_dict(), *info.signature.outputs.to_dict())
    assert [list(spec["tensor-spec"]["shape"]) for spec in signature] == [[-1, 32, 32, 1], [-1, 14]]
    assert cnn.data.tags["cxr.model_sha256"] == file_sha256([tiny_project / "models" / "cnn" / "model.keras"])


def test_second_repro_has_nothing_to_do(tiny_project):
    out = run(["dvc", "repro"], tiny_project).stdout
    assert _stages_run(out) == [] and "up to date" in out


def test_dvc_metrics_and_plots_commands_work(tiny_project):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], tiny_project).stdout)
    assert any("metrics/eval/cnn.json" in str(v) for v in shown.values())
    run(["dvc", "plots", "show", "-o", "plots-html"], tiny_project)
    assert (tiny_project / "plots-html" / "index.html").is_file()


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_second_clone_restores_every_stage_from_a_remote_and_reruns_only_what_changed(tiny_copy, tmp_path):
    """The DVC way to reproduce elsewhere: outputs and run-cache in a remote, restored, not re-executed."""
    remote, b = tmp_path / "remote", tmp_path / "b"
    run(["dvc", "remote", "add", "--local", "-d", "storage", str(remote)], tiny_copy)
    run(["dvc", "push", "--run-cache"], tiny_copy)

    run(["git", "clone", "-q", str(tiny_copy), str(b)], tmp_path)
    run(["dvc", "remote", "add", "--local", "-d", "storage", str(remote)], b)
    run(["dvc", "pull", "--run-cache"], b)
    out = run(["dvc", "repro"], b).stdout
    assert _stages_run(out) == [], out
    assert _files(b / "metrics") == _files(tiny_copy / "metrics")
    assert (b / "models/cnn/model.keras").read_bytes() == (tiny_copy / "models/cnn/model.keras").read_bytes()

    # evaluate's alone: export follows only the metrics it reads (the flags and figures of its model card)
    edit_params(b, lambda p: p["evaluate"].update(bootstrap=60))
    assert sorted(_stages_run(run(["dvc", "repro"], b).stdout)) == [
        "evaluate@cnn", "evaluate@mobilenet", "export@cnn", "export@mobilenet", "report"]

    # Back to the commit: git restores the git-tracked outputs, DVC the cached ones.
    run(["git", "checkout", "HEAD", "--", "."], b)   # HEAD: DVC autostages what repro wrote
    run(["dvc", "checkout"], b)
    assert "up to date" in run(["dvc", "status"], b).stdout
    assert _files(b / "metrics") == _files(tiny_copy / "metrics")

    # The same change again: restored from the run-cache this clone kept (what CI's Actions cache
    # keeps). Only report executes: its summary.md is git-tracked, and DVC run-caches no such stage.
    edit_params(b, lambda p: p["evaluate"].update(bootstrap=60))
    out = run(["dvc", "repro"], b).stdout
    assert _stages_run(out) == ["report"], out
    assert "Stage 'evaluate@cnn' is cached - skipping run" in out


def test_fresh_reproduction_of_a_commit_gives_its_committed_metrics(tiny_copy, tmp_path):
    """`make check-repro`: clone, reproduce from an empty cache, compare. One small variant: the tiny
    project without mobilenet, exported to fp32 TFLite only. The reproduction is kept for the user to
    look at; here it goes in the test's folder (TMPDIR), not /tmp, so that pytest removes it."""
    def one_small_variant(p):
        p["models"] = {"cnn": p["models"]["cnn"]}
        p["export"].update(tflite=["fp32"], coreml=False)
    project = tiny_copy
    edit_params(project, one_small_variant)
    assert sorted(_stages_run(run(["dvc", "repro"], project).stdout)) == ["export@cnn", "report"]
    shutil.rmtree(project / "models" / "mobilenet")   # its DVC outputs would lose their .gitignore below
    run(["git", "rm", "-rq", ":(glob)metrics/*/mobilenet*", "reports/mobilenet", "models/mobilenet"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "results"], project)
    proc = run(["cxr", "check-repro", "--fresh"], project, env={"TMPDIR": str(tmp_path)})
    assert "0 quality metrics beyond their band, 0 moved within noise (against HEAD)" in proc.stdout, proc.stdout
    clone = Path(proc.stdout.rsplit("reproduction in ", 1)[1].strip())
    assert clone.is_relative_to(tmp_path)
    assert not (clone / "models" / "mobilenet").exists()
    for path in ("metrics/train/cnn.json", "metrics/eval/cnn.json", "metrics/export/cnn.json"):
        assert (project / path).read_bytes() == (clone / path).read_bytes(), path


def test_check_repro_judges_each_metric_against_the_committed_interval(tiny_copy):
    clean = run(["cxr", "check-repro"], tiny_copy)
    assert "0 quality metrics beyond their band" in clean.stdout
    path = tiny_copy / "metrics" / "eval" / "cnn.json"
    metrics = json.loads(path.read_text())
    ci = metrics["abnormal"]["auroc_ci95"]
    metrics["abnormal"]["auroc"] = (ci["low"] + ci["high"]) / 2  # moved, but inside the interval
    metrics["mean_auroc"] = metrics["mean_auroc_ci95"]["high"] + 0.01
    path.write_text(json.dumps(metrics))
    proc = run(["cxr", "check-repro"], tiny_copy, check=False)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("cxr check-repro: metrics/eval/cnn.json: mean_auroc: ") and "95% interval" in line
    assert "1 quality metrics beyond their band, 1 moved within noise" in proc.stdout
    report = run(["cxr", "pr-report", "--base", "HEAD"], tiny_copy).stdout
    assert "| **changed** | `metrics/eval/cnn.json` | `mean_auroc` |" in report
    assert "| within noise | `metrics/eval/cnn.json` | `abnormal.auroc` |" in report


def _status(project) -> dict:
    """`dvc status --json`: the stages a change reaches, each with what changed."""
    return json.loads(run(["dvc", "status", "--json"], project).stdout)


def _params_changed(param: str) -> list[dict]:
    """What `dvc status --json` says of a stage whose only change is this param."""
    return [{"changed deps": {"params.yaml": {param: "modified"}}}]


def test_changed_evaluate_param_reruns_only_what_uses_it_and_shows_in_pr_report(tiny_copy):
    # (A param of evaluate's alone reruns no export: the second-clone test changes evaluate.bootstrap.)
    edit_params(tiny_copy, lambda p: p["evaluate"].update(threshold="youden"))   # also each format's threshold
    # The stages that read it, and only those (report follows the evaluations' outputs, as any stage
    # follows its deps: the other tests here rerun whole chains).
    assert _status(tiny_copy) == {f"{stage}@{v}": _params_changed(param) for v in ("cnn", "mobilenet")
                                  for stage, param in (("evaluate", "evaluate"), ("export", "evaluate.threshold"))}
    assert _stages_run(run(["dvc", "repro", "evaluate@cnn"], tiny_copy).stdout) == ["evaluate@cnn"]
    report = run(["cxr", "pr-report", "--base", "HEAD"], tiny_copy).stdout
    assert "evaluate.threshold" in report and "youden" in report
    assert "abnormal.threshold_method" in report or "abnormal.at_threshold" in report


def test_changed_variant_param_reruns_only_that_variant(tiny_copy):
    edit_params(tiny_copy, lambda p: p["models"]["cnn"]["head"].update(dropout=0.3))
    # The stages that read it: evaluate@cnn and export@cnn follow train@cnn's model, as the other tests
    # here show by rerunning chains. features@cnn reads the variant's whole section (a linear variant
    # has no `weights` key to name alone); report compares every variant's params with the seed study's.
    assert _status(tiny_copy) == {"features@cnn": _params_changed("models.cnn"),
                                  "train@cnn": _params_changed("models.cnn"), "report": _params_changed("models")}


def test_adding_the_linear_variant_runs_only_its_stages_and_it_goes_everywhere_a_network_goes(tiny_copy):
    """`linear` (fitted by scikit-learn) is trained, evaluated, exported, predicted and logged like any variant."""
    import mlflow
    import yaml

    from conftest import BUNDLED, ROOT
    linear = yaml.safe_load((ROOT / "params.yaml").read_text())["models"]["linear"]
    edit_params(tiny_copy, lambda p: p["models"].update(linear=linear))
    ran = _stages_run(run(["dvc", "repro"], tiny_copy).stdout)
    assert sorted(ran) == ["evaluate@linear", "export@linear", "features@linear", "report", "train@linear"]

    trained = json.loads((tiny_copy / "metrics" / "train" / "linear.json").read_text())
    assert trained["epochs_run"] == 1 and 0.3 < trained["val_auroc"] < 1 and not trained["collapsed"]
    evaluation = json.loads((tiny_copy / "metrics" / "eval" / "linear.json").read_text())
    assert 0 <= evaluation["abnormal"]["auroc"] <= 1
    assert len(list((tiny_copy / "reports" / "linear" / "heatmaps").iterdir())) == 2
    exported = json.loads((tiny_copy / "metrics" / "export" / "linear.json").read_text())
    assert exported["tflite"]["fp32"]["max_abs_diff"] < 1e-4
    assert abs(exported["tflite"]["int8"]["mean_auroc_delta"]) < 0.05  # ranks kept; single outputs may move more
    manifest = json.loads((tiny_copy / "models" / "linear" / "export" / "manifest.json").read_text())
    assert manifest["family"] == "linear" and (tiny_copy / "models/linear/export/model.mlpackage").is_dir()
    assert re.search(r"\| (\*\*)?linear( \(flagged\)\*\*)? \|", (tiny_copy / "reports" / "summary.md").read_text())

    image = sorted((BUNDLED / "images").glob("*.png"))[0]
    for model, name in (("models/linear", "linear (keras)"),
                        ("models/linear/export/model_int8.tflite", "linear (model_int8.tflite)")):
        proc = run(["cxr", "predict", str(image), "--json", "--model", model], tiny_copy)
        result = json.loads(proc.stdout)
        assert result["model"] == name and 0 <= result["abnormal_score"] <= 1

    mlflow.set_tracking_uri(f"sqlite:///{tiny_copy / 'mlflow.db'}")
    [version] = mlflow.MlflowClient().search_model_versions("name = 'linear'")
    assert version.tags["dvc.stage"] == "train@linear"
