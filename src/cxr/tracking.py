"""MLflow: the one place that knows run names, tags and what gets logged.

Store: ``MLFLOW_TRACKING_URI`` when set, else ``mlflow.db`` (SQLite) at the
repository root (gitignored; never a DVC output), with the artifacts in
``mlruns/`` beside a SQLite file (``artifact_root``); the same for
``dvc repro`` and for ``dvc exp run --temp`` / ``--queue`` runs, which execute
in a temporary copy inside ``.dvc`` but get the repository in ``DVC_ROOT``.
Runs are linked by content, so no run ID has to live in a DVC output (which
would change its hash every run): a data run per data version (tagged with
the sha256 of labels, splits and cache) holds the data stages' metrics; each
training run nests under it and is tagged with the sha256 of the model file
it produced; evaluate and export log child runs of the newest run with that
tag, and export registers its model, tagged with the training stage's
``dvc.lock`` entry.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from cxr.errors import CxrError, first_line
from cxr.outputs import file_sha256
from cxr.paths import DVC_LOCK

DEFAULT_STORE = "mlflow.db"
EXPERIMENT = "cxr-pipeline"
TAG_VARIANT = "cxr.variant"
TAG_STAGE = "cxr.stage"
TAG_MODEL = "cxr.model_sha256"
TAG_DATA = "cxr.data_sha256"
TAG_EXPERIMENT = "dvc.exp_name"        # set by DVC for `dvc exp run` (workspace, temp or queued)
STAGE_DATA = "data"
TAG_LOCK_MD5 = "dvc.lock.model_md5"    # registry: the model's md5 as train@<variant> in dvc.lock records it
TAG_LOCK_ENTRY = "dvc.lock.stage_sha256"  # registry: sha256 of the whole train@<variant> entry of dvc.lock


class TrackingError(CxrError):
    """The tracking store cannot be used."""


def tracking_uri(env: dict | None = None, cwd: str | os.PathLike | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``sqlite:///<repository root>/mlflow.db``."""
    env = os.environ if env is None else env
    if env.get("MLFLOW_TRACKING_URI"):
        return env["MLFLOW_TRACKING_URI"]
    root = Path(env.get("DVC_ROOT") or cwd or os.getcwd()).resolve()
    return f"sqlite:///{root / DEFAULT_STORE}"


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail before any work if the store cannot take runs."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise OSError(f"HTTP {r.status}")
        except (OSError, urllib.error.URLError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"MLFLOW_TRACKING_URI={uri}: tracking server unreachable ({reason}); "
                                f"start it, or unset MLFLOW_TRACKING_URI to log to {DEFAULT_STORE} at the repository root") from None
    elif uri.startswith("file:") or "://" not in uri:
        raise TrackingError(f"MLFLOW_TRACKING_URI={uri}: MLflow 3 refuses file stores; use sqlite:///PATH "
                            "or an http(s) tracking server")


def run_tags(env: dict | None = None) -> dict[str, str]:
    """Tags every run gets: the git state, and the DVC experiment it belongs to, if any."""
    env = os.environ if env is None else env
    return {**git_state(), **({TAG_EXPERIMENT: env["DVC_EXP_NAME"]} if env.get("DVC_EXP_NAME") else {})}


def git_state(cwd: str | os.PathLike = ".") -> dict[str, str]:
    """Commit and dirty flag of the work tree (``unknown`` outside git)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
    return {"git.commit": head.stdout.strip(), "git.dirty": str(dirty).lower()}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{'train': {'augment': {'zoom': 0.1}}}`` -> ``{'train.augment.zoom': 0.1}``."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _warn(message: str, stage: str = "train") -> None:
    print(f"{stage}: warning: {message}", file=sys.stderr, flush=True)


class TrainingRun:
    """The MLflow side of one training: each epoch's metrics, then the model.

    Tracking never costs the training. If the store fails mid-fit (an SQLite
    file locked by another process, a server gone), the epochs' metrics are
    kept in memory and written, in order, when the model is logged; that final
    write is tried ``attempts`` times. If the store is still unusable, the
    stage's outputs stand and one warning line names the incomplete run.
    """

    def __init__(self, mlflow, run_id: str, attempts: int = 3):
        self.mlflow, self.run_id, self.attempts = mlflow, run_id, attempts
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.failed = False

    def _flush(self) -> None:
        while self.pending:
            step, metrics = self.pending[0]
            self.mlflow.log_metrics(metrics, step=step, run_id=self.run_id)
            self.pending.pop(0)

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        self.pending.append((step, metrics))
        if self.failed:
            return  # each try at a failing store can block ~20 s: wait for the end
        try:
            self._flush()
        except _failures() as e:
            self.failed = True
            _warn(f"MLflow run {self.run_id}: logging failed at epoch {step} ({first_line(e)}); training goes "
                  "on, metrics are kept and written at the end")

    def epoch_callback(self):
        """Keras callback: each epoch's finite metrics to ``log_epoch``."""
        import keras
        run = self

        class EpochLogger(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                run.log_epoch(epoch + 1, {k: float(v) for k, v in (logs or {}).items()
                                          if isinstance(v, (int, float)) and v == v})

        return EpochLogger()

    def finish(self, log_model) -> bool:
        """Write what is pending, then ``log_model(mlflow)``; False (and a warning) if the store
        stays unusable for every attempt."""
        for attempt in range(1, self.attempts + 1):
            try:
                self._flush()
                if log_model is not None:
                    log_model(self.mlflow)
                    log_model = None  # logged: a retry must not log it twice
                return True
            except _failures() as e:
                reason = first_line(e)
        missing = f"{len(self.pending)} epoch(s) of metrics" + (" and the model" if log_model else "")
        _warn(f"MLflow run {self.run_id} is incomplete ({missing} not logged after {self.attempts} attempts: "
              f"{reason}); the stage's outputs are written")
        return False


@functools.cache
def _failures() -> tuple[type[BaseException], ...]:
    """What a failing store raises: MLflow wraps most SQL and HTTP errors in MlflowException,
    but a connection that cannot even be checked out (a locked SQLite file) surfaces as
    SQLAlchemy's own error, and a schema migration another process is running as Alembic's."""
    from alembic.util.exc import CommandError
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError
    return (MlflowException, SQLAlchemyError, CommandError, OSError)


def data_sha256(splits: str | os.PathLike, labels: str | os.PathLike, cache_sha256: str) -> str:
    """The data version a training run nests under: the split and label files and the cache's digest."""
    return hashlib.sha256(f"{file_sha256([splits, labels])} {cache_sha256}".encode()).hexdigest()


def _data_run(mlflow, experiment_id: str, data_sha256: str, data_metrics: dict[str, dict]) -> str:
    """ID of the parent run of this data version (labels, splits and cache by content):
    found by its tag, or created holding the data stages' metrics.

    The data stages run before the content they make is known, and are often
    restored rather than run; their metric files are what they measured, so the
    first training on that data records them once, for every variant to nest under.
    """
    from mlflow.entities import Metric

    found = mlflow.search_runs([experiment_id], output_format="list", max_results=1,
                               filter_string=f"tags.`{TAG_STAGE}` = '{STAGE_DATA}' and tags.`{TAG_DATA}` = '{data_sha256}'")
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run_id = client.create_run(experiment_id, run_name=f"data {data_sha256[:8]}",
                               tags={TAG_STAGE: STAGE_DATA, TAG_DATA: data_sha256, **run_tags()}).info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in flatten(data_metrics).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    # log_batch (at most 1000 metrics a call), not the fluent API, which stays the training run's.
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    client.set_terminated(run_id)
    return run_id


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a local SQLite store's URI; None for any other store."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``mlruns/`` beside a SQLite store's file; for a
    server, None (the server decides). MLflow's own default is the working directory, which for
    ``dvc exp run --temp``/``--queue`` is the copy DVC deletes after the run: every model logged
    to that experiment afterwards, by any run, would go there too."""
    store = _sqlite_file(uri)
    return None if store is None else (store.resolve().parent / "mlruns").as_uri()


def _set_experiment(mlflow, uri: str):
    """The pipeline's experiment, made active; created with its ``artifact_root``."""
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifact_root(uri))
    return mlflow.set_experiment(EXPERIMENT)


@contextmanager
def _one_at_a_time(uri: str):
    """Hold an exclusive lock on a local SQLite store's file: experiments run in parallel
    (`dvc queue start -j 2`) would otherwise create a new store's tables at once, and MLflow's
    migrations then collide (measured: 'table ... already exists', for both processes). flock,
    not SQLite's own fcntl locks, so it never blocks SQLite itself."""
    import fcntl
    path = _sqlite_file(uri)
    if path is None:
        yield
        return
    with open(path, "ab") as store:   # an empty file is an empty SQLite database
        fcntl.flock(store, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(store, fcntl.LOCK_UN)


@contextmanager
def training_run(variant: str, stage: str, params: dict, data_sha256: str, uri: str | None = None,
                 data_metrics: dict[str, dict] | None = None, tags: dict[str, str] | None = None):
    """An MLflow run for one training of ``variant``, nested under the run of its data
    (``data_metrics``: what the data stages measured, by stage), with extra ``tags``
    (e.g. the devices it ran on); yields its ``TrainingRun``."""
    import mlflow

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    tags = {TAG_VARIANT: variant, TAG_STAGE: stage, TAG_DATA: data_sha256, **run_tags(), **(tags or {})}
    try:  # before any training: failing here loses nothing
        with _one_at_a_time(uri):   # the first contact may create the store
            experiment_id = _set_experiment(mlflow, uri).experiment_id
            parent = _data_run(mlflow, experiment_id, data_sha256, data_metrics or {})
        # The tag, not start_run(parent_run_id=): MLflow nests only under an active run that way.
        run_id = mlflow.start_run(run_name=variant, tags={**tags, "mlflow.parentRunId": parent}).info.run_id
        mlflow.log_params({k: "null" if v is None else v for k, v in flatten(params).items()})
    except _failures() as e:
        if mlflow.active_run():
            mlflow.end_run("FAILED")
        raise TrackingError(f"MLFLOW_TRACKING_URI={uri}: cannot start a run ({first_line(e)})") from None
    run = TrainingRun(mlflow, run_id)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        try:
            mlflow.end_run(status)
        except _failures() as e:
            _warn(f"MLflow run {run_id} could not be closed ({first_line(e)}); it shows as running")


def log_trained_model(mlflow, model, model_path: str | os.PathLike, summary: dict,
                      artifacts: Iterable[str | os.PathLike] = ()) -> None:
    """The model (with its signature), its summary metrics, artifacts and content tag."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def batch_of(tensor) -> Schema:   # float32, any batch size
        return Schema([TensorSpec(np.dtype(np.float32), (-1, *tensor.shape[1:]))])

    # From the shapes, with no input example: MLflow validates an example by reloading the whole model and
    # predicting (7 of a DenseNet-121 training stage's 27 s here), and an all-zero image shows a user nothing.
    signature = ModelSignature(inputs=batch_of(model.inputs[0]), outputs=batch_of(model.outputs[0]))
    import keras
    import tensorflow as tf
    # Pinned here: MLflow's own requirement inference reloads the model in a subprocess (~10 s).
    requirements = [f"tensorflow-cpu=={tf.__version__}", f"keras=={keras.__version__}"]
    mlflow.tensorflow.log_model(model, name="model", signature=signature, pip_requirements=requirements)
    mlflow.log_metrics({f"best_{k}": float(v) for k, v in summary.items()
                        if isinstance(v, (int, float)) and v == v})
    for path in artifacts:
        mlflow.log_artifact(str(path))
    mlflow.set_tag(TAG_MODEL, file_sha256([model_path]))


def find_training_run(variant: str, model_sha256: str, uri: str | None = None) -> str | None:
    """ID of the newest training run that produced exactly the model file with this sha256."""
    import mlflow

    mlflow.set_tracking_uri(uri or tracking_uri())
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list", max_results=1,
                              filter_string=(f"tags.`{TAG_MODEL}` = '{model_sha256}' and tags.`{TAG_VARIANT}` = '{variant}' "
                                             f"and tags.`{TAG_STAGE}` LIKE 'train@%'"),
                              order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None



# Stages that use a trained model log a child run of its training run; their metrics
# also land on the training run under these prefixes.
STAGE_PREFIX = {"evaluate": "test_", "export": "export_"}


def log_model_stage(stage: str, variant: str, model_sha256: str, metrics: dict[str, float],
                    params: dict, artifacts: Iterable[str | os.PathLike] = (), uri: str | None = None) -> str | None:
    """Log ``stage`` (evaluate, export) as a child run of the training run of this exact model
    file (``model_sha256``: its ``outputs.file_sha256``).

    The child holds the stage's params (MLflow params are immutable, and each
    run of the stage may use other ones), its metrics and its files (folders
    whole); the training run also gets the latest metrics, so one view shows a
    model's training, test results and export. Without a training run (store
    reset, model restored from a DVC cache), a new top-level run tagged the
    same way. Returns the child's run ID; None, with one warning line, if the
    store fails (an ``mlflow.db`` locked by another process): the stage's
    outputs are written before and stand.
    """
    try:
        return _log_model_stage(stage, variant, model_sha256, metrics, params, artifacts, uri)
    except _failures() as e:
        _warn(f"MLflow: {stage}@{variant} was not logged ({first_line(e)}); its outputs are written", stage=stage)
        return None


def _log_model_stage(stage, variant, model_sha256, metrics, params, artifacts, uri) -> str:
    import mlflow

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    with _one_at_a_time(uri):   # the first contact may create the store (a model restored, not trained)
        _set_experiment(mlflow, uri)
    prefixed = {f"{STAGE_PREFIX[stage]}{k}": float(v) for k, v in metrics.items() if v is not None}
    tags = {TAG_VARIANT: variant, TAG_STAGE: f"{stage}@{variant}", TAG_MODEL: model_sha256, **run_tags()}

    def log_child(nested: bool) -> str:
        with mlflow.start_run(run_name=f"{stage} {variant}", nested=nested, tags=tags) as run:
            mlflow.log_metrics(prefixed)
            mlflow.log_params({f"{stage}.{k}": v for k, v in flatten(params).items()})
            for path in map(Path, artifacts):
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=f"{stage}/{path.name}")
                else:
                    mlflow.log_artifact(str(path), artifact_path=stage)
            return run.info.run_id

    parent = find_training_run(variant, model_sha256, uri)
    if parent is None:
        return log_child(nested=False)
    with mlflow.start_run(run_id=parent):
        mlflow.log_metrics(prefixed)
        return log_child(nested=True)


def lock_tags(stage: str, out: str, lock_path: str | os.PathLike = DVC_LOCK) -> dict[str, str]:
    """Tags naming ``stage``'s entry in ``dvc.lock`` and the md5 it records for ``out``, if that
    entry is current (the md5 matches the file); DVC restores exactly that file from it."""
    import yaml
    from dvc_data.hashfile.hash import file_md5

    try:
        entry = yaml.safe_load(Path(lock_path).read_text())["stages"][stage]
        recorded = next(o["md5"] for o in entry["outs"] if o["path"] == out)
    except (OSError, KeyError, TypeError, StopIteration, yaml.YAMLError):
        return {TAG_LOCK_MD5: f"not in {lock_path}"}
    actual = file_md5(out)
    if recorded != actual:
        return {TAG_LOCK_MD5: f"{lock_path} records {recorded}, the file is {actual} (not committed by DVC)"}
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
    return {TAG_LOCK_MD5: recorded, TAG_LOCK_ENTRY: digest, "dvc.stage": stage}


def register_model(variant: str, model_path: str | os.PathLike, model_sha256: str, tags: dict[str, str],
                   uri: str | None = None) -> str | None:
    """Register the Keras model logged by this model file's (``model_sha256``) training run in the Model
    Registry under ``variant``, its version tagged with ``tags``; the version, or None
    with one warning line (no such run, e.g. the model was restored from a DVC cache;
    a failing store)."""
    import mlflow

    try:
        run_id = find_training_run(variant, model_sha256, uri)
        if run_id is None:
            _warn(f"MLflow: no training run produced {model_path} (restored from a DVC cache?); "
                  "not registered", stage="export")
            return None
        [logged] = mlflow.get_run(run_id).outputs.model_outputs
        return mlflow.register_model(f"models:/{logged.model_id}", variant, tags=tags).version
    except _failures() as e:
        _warn(f"MLflow: {variant} was not registered ({first_line(e)})", stage="export")
        return None
