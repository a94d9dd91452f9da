"""Bad inputs, interrupted stages, determinism: the pipeline never leaves broken outputs."""
import io
import json
import shutil
import signal
import subprocess
import time

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from conftest import BUNDLED, ROOT, edit_params, project_env, run, tiny_params
from test_images import _png_claiming

BAD = {  # name -> reason resize and predict must give
    "zero.png": "empty file (0 bytes)",
    "truncated.png": "corrupt PNG",
    "text.png": "not a PNG, JPEG or DICOM file",
    "bomb.png": "decompression bomb",
    "nopixels.dcm": "DICOM has no pixel data",
}
ODD_BUT_VALID = ("jpeg_named.png", "deep16.png", "rgba.png", "palette.png", "cmyk.jpg", "one_pixel.png",
                 "wide.png")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Every bad or odd input the issue lists, made from a real X-ray, plus 3 good images."""
    folder = tmp_path_factory.mktemp("corpus")
    images = sorted((BUNDLED / "images").glob("*.png"))
    xray = Image.open(images[0])
    for p in images[1:4]:
        shutil.copy(p, folder / p.name)
    data = images[0].read_bytes()

    def save(name, img, fmt="PNG", **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        (folder / name).write_bytes(buf.getvalue())

    (folder / "zero.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(data[: len(data) // 3])
    (folder / "text.png").write_text("patient notes, not a picture\n")
    (folder / "bomb.png").write_bytes(_png_claiming(30000, 30000))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(folder / "nopixels.dcm")
    save("jpeg_named.png", xray, "JPEG")
    save("deep16.png", Image.fromarray(np.asarray(xray).astype(np.uint16) * 256))
    save("rgba.png", xray.convert("RGBA"))
    save("palette.png", xray.convert("P", palette=Image.Palette.ADAPTIVE))
    save("cmyk.jpg", xray.convert("CMYK"), "JPEG")
    save("one_pixel.png", xray.crop((0, 0, 1, 1)))
    save("wide.png", xray.resize((300, 180)))
    return folder


def test_resize_excludes_bad_inputs_with_reasons_and_keeps_the_rest(corpus, tmp_path):
    from cxr.data.cache import build_cache, load_cache
    report = build_cache(sorted(corpus.iterdir()), 32, 2, tmp_path / "cache", max_bad_fraction=0.5, progress=False)
    assert set(report["excluded_images"]) == set(BAD)
    for name, reason in BAD.items():
        assert reason in report["excluded_images"][name]
    pixels, index = load_cache(tmp_path / "cache")
    assert set(index["Image Index"]) == set(ODD_BUT_VALID) | {p.name for p in corpus.iterdir() if p.name[0] == "0"}
    assert report["cached"] == len(index) == 10
    rows = index.set_index("Image Index")["row"]
    assert pixels[rows["rgba.png"]].std() > 10 and pixels[rows["deep16.png"]].max() > 200


def test_predict_reports_each_bad_input_and_predicts_the_rest(corpus, tiny_project):
    proc = run(["cxr", "predict", str(corpus), "--json", "--model", "models/cnn"], tiny_project, check=False)
    assert proc.returncode == 1
    errors = {}
    for line in proc.stderr.strip().splitlines():
        _, path, reason = line.split(": ", 2)  # "cxr predict: PATH: reason"
        errors[path.rsplit("/", 1)[-1]] = reason
    assert set(errors) == set(BAD)
    assert all(BAD[name] in reason for name, reason in errors.items())
    predicted = {json.loads(line)["image"].rsplit("/", 1)[-1] for line in proc.stdout.splitlines()}
    good = {p.name for p in corpus.iterdir() if p.name[0] == "0"}
    assert predicted == set(ODD_BUT_VALID) | good
    assert "Traceback" not in proc.stderr


def _start_held(project, target, n, gate_dir, *cmd):
    """A stage held at the n-th call of ``target`` (see tests/gate.py)."""
    gate_dir.mkdir()
    # SIGINT as a terminal delivers it: a shell starts background jobs (CI runners may) with SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler.
    return subprocess.Popen(["python", str(ROOT / "tests" / "gate.py"), target, str(n), str(gate_dir), *cmd],
                            cwd=project, env=project_env(project), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.fixture
def held_stages():
    """Stages started held; any still alive when the test ends (a failure) is killed, never left
    blocked on its gate."""
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_until_held(proc, gate_dir, timeout=300.0):
    """Poll for the state (the stage reached its gate), never for a time."""
    deadline = time.monotonic() + timeout
    while not (gate_dir / "reached").exists():
        assert proc.poll() is None, f"stage ended before its gate ({proc.returncode}): {proc.stderr.read()}"
        assert time.monotonic() < deadline, "stage never reached its gate"
        time.sleep(0.05)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_resize_leaves_previous_cache_and_next_repro_completes(project, tmp_path, held_stages, sig):
    edit_params(project, lambda p: p["resize"].update(workers=1))  # in-process, so the gate holds it
    run(["dvc", "repro", "resize"], project)
    before = (project / "data" / "cache" / "images.npy").read_bytes()
    edit_params(project, lambda p: p["image"].update(size=160))  # a new cache must be built
    # Held while decoding image 200 of 557: the new cache is half written.
    proc = _start_held(project, "cxr.data.cache:load_and_resize", 200, tmp_path / "gate", "stages/resize.py")
    held_stages.append(proc)
    _wait_until_held(proc, tmp_path / "gate")
    assert any(".cache.tmp-" in p.name for p in (project / "data").iterdir())
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    if sig == signal.SIGINT:
        assert "interrupted; outputs left as they were" in proc.stderr.read()
    assert (project / "data" / "cache" / "images.npy").read_bytes() == before
    run(["dvc", "repro", "resize"], project)
    assert np.load(project / "data" / "cache" / "images.npy", mmap_mode="r").shape[1:] == (160, 160)
    assert _leftovers(project / "data") == []


def test_killed_train_leaves_no_model_and_next_repro_completes(project, tmp_path, held_stages):
    edit_params(project, tiny_params)
    edit_params(project, lambda p: p["models"]["cnn"].update(epochs=30))
    run(["dvc", "repro", "resize", "split"], project)
    # Held inside fit: at the end of epoch 1, when its metrics go to MLflow.
    proc = _start_held(project, "mlflow:log_metrics", 1, tmp_path / "gate", "stages/train.py", "cnn")
    held_stages.append(proc)
    _wait_until_held(proc, tmp_path / "gate")
    proc.kill()
    proc.wait(timeout=60)
    assert not (project / "models" / "cnn" / "model.keras").exists()
    edit_params(project, lambda p: p["models"]["cnn"].update(epochs=1))
    run(["dvc", "repro", "train@cnn"], project)
    assert (project / "models" / "cnn" / "model.keras").is_file()
    assert _leftovers(project / "models" / "cnn") == []


def test_split_and_resize_stages_are_byte_identical_when_rerun(project):
    run(["dvc", "repro", "split", "resize"], project)
    first = {p: (project / p).read_bytes() for p in ("data/splits.csv", "data/cache/images.npy",
                                                      "data/cache/index.csv")}
    run(["dvc", "repro", "--force", "split", "resize"], project)
    for path, data in first.items():
        assert (project / path).read_bytes() == data, path


def _lock_sqlite(db) -> subprocess.Popen:
    """A second process holding SQLite's exclusive lock on ``db`` until its stdin closes."""
    import sys
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys\n"
                               "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                               "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()",
                               str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_evaluation_with_a_locked_mlflow_store_writes_its_outputs_and_warns(tiny_copy, held_stages):
    project = tiny_copy   # trained, its mlflow.db holds the training run
    holder = _lock_sqlite(project / "mlflow.db")
    held_stages.append(holder)
    proc = run(["python", "stages/evaluate.py", "cnn"], project, check=False)
    holder.stdin.close()
    holder.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [warning] = [line for line in proc.stderr.splitlines() if line.startswith("evaluate: warning:")]
    assert "evaluate@cnn was not logged (" in warning and "database is locked" in warning
    assert json.loads((project / "metrics" / "eval" / "cnn.json").read_text())["abnormal"]["auroc"] is not None
    assert "Traceback" not in proc.stderr


def test_training_survives_an_mlflow_store_locked_by_another_process(project, tmp_path, held_stages):
    import threading

    import mlflow
    from cxr import tracking
    from cxr.outputs import file_sha256
    edit_params(project, tiny_params)
    edit_params(project, lambda p: p["models"]["cnn"].update(epochs=3))
    edit_params(project, lambda p: p["train"].update(early_stopping_patience=5))
    run(["dvc", "repro", "resize", "split"], project)
    # Held at the first per-epoch log: the run exists, epoch 1 is done.
    proc = _start_held(project, "mlflow:log_metrics", 1, tmp_path / "gate", "stages/train.py", "cnn")
    held_stages.append(proc)
    threading.Thread(target=proc.stdout.read, daemon=True).start()   # never let stdout fill its pipe
    _wait_until_held(proc, tmp_path / "gate")
    # A second process takes SQLite's exclusive lock on the store, as a long `mlflow gc` or a
    # second writer would; then the stage moves on.
    holder = _lock_sqlite(project / "mlflow.db")
    held_stages.append(holder)
    open(tmp_path / "gate" / "gate", "w").close()   # release the stage
    stderr = []
    for line in proc.stderr:                         # until the stage says the store failed
        stderr.append(line)
        if line.startswith("train: warning: MLflow run"):
            break
    assert "logging failed at epoch 1 (" in stderr[-1] and "database is locked" in stderr[-1], "".join(stderr)
    holder.stdin.close()                             # the other process lets go
    holder.wait(timeout=60)
    rest = proc.stderr.read()
    assert proc.wait(timeout=600) == 0, rest
    assert "incomplete" not in rest
    summary = json.loads((project / "metrics" / "train" / "cnn.json").read_text())
    assert summary["epochs_run"] == 3
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    [run_info] = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id],
                                    filter_string=f"tags.`{tracking.TAG_STAGE}` = 'train@cnn'")
    assert run_info.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_info.info.run_id, "loss")] == [1, 2, 3]
    assert run_info.data.tags[tracking.TAG_MODEL] == file_sha256([project / "models/cnn/model.keras"])
