"""Training: the tf.data feed from the resize cache, augmentation, the fit loop, determinism."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from cxr.data.dataset import Dataset, Subset  # noqa: E402
from cxr.evaluate import binary_crossentropy, mean_auroc  # noqa: E402
from cxr.models import MODELS, build_model  # noqa: E402
from cxr.outputs import atomic_path  # noqa: E402
from cxr.params import AugmentParams, LinearParams, ModelParams, TrainParams, VariantParams  # noqa: E402



# --- determinism ---

def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TF, and make TF ops deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def split_cpu(devices: int = 2) -> list[str]:
    """Split the CPU into logical devices (for MirroredStrategy on a CPU-only machine).

    Must run before TensorFlow initializes its devices; returns their names.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    # Asking for logical devices would initialize them; the configuration does not.
    configured = tf.config.get_logical_device_configuration(cpu) or []
    if len(configured) < devices:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
        except RuntimeError as e:  # devices already initialized in this process
            raise RuntimeError(f"cannot split the CPU after TensorFlow started: {e}") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")][:devices]


def devices() -> dict[str, str]:
    """What a training computes on, as MLflow tags: TensorFlow's logical devices and the GPUs' names."""
    gpus = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in tf.config.list_physical_devices("GPU")]
    return {"cxr.devices": ", ".join(d.name for d in tf.config.list_logical_devices()),
            "cxr.gpus": ", ".join(gpus) or "none"}


# --- loss ---

def balanced_class_weights(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class weights for positives and negatives, each side counting equally.

    w_pos = negatives / n and w_neg = positives / n (CheXNet's weighting):
    bounded in [0, 1], unlike negatives / positives, which reaches ~100 for
    Hernia and makes the loss swing. A class with no positives keeps 1 / 1.
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    pos = y.sum(axis=0)
    w_pos = np.where(pos > 0, (n - pos) / n, 1.0)
    w_neg = np.where(pos > 0, pos / n, 1.0)
    return w_pos.astype(np.float32), w_neg.astype(np.float32)


@keras.saving.register_keras_serializable(package="cxr")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with a weight per class for positives and for negatives."""

    def __init__(self, positive_weights, negative_weights, name="weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive_weights = [float(w) for w in positive_weights]
        self.negative_weights = [float(w) for w in negative_weights]

    def call(self, y_true, y_pred):
        ops = keras.ops
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1 - eps)
        y = ops.cast(y_true, p.dtype)
        w_pos = ops.convert_to_tensor(self.positive_weights, dtype=p.dtype)
        w_neg = ops.convert_to_tensor(self.negative_weights, dtype=p.dtype)
        loss = -(w_pos * y * ops.log(p) + w_neg * (1 - y) * ops.log(1 - p))
        return ops.mean(loss, axis=-1)

    def get_config(self):
        return {**super().get_config(), "positive_weights": self.positive_weights,
                "negative_weights": self.negative_weights}


# --- input pipeline ---

def augmentation(params: AugmentParams, seed: int) -> keras.Sequential | None:
    """Seeded Keras augmentation layers from params; ``None`` when all are off."""
    if not params.enabled:
        return None
    layers = []
    if params.rotation:
        layers.append(keras.layers.RandomRotation(params.rotation / 360, fill_mode="constant", seed=seed))
    if params.shift:
        layers.append(keras.layers.RandomTranslation(params.shift, params.shift, fill_mode="constant", seed=seed + 1))
    if params.zoom:
        layers.append(keras.layers.RandomZoom(params.zoom, fill_mode="constant", seed=seed + 2))
    if params.shear:
        layers.append(keras.layers.RandomShear(params.shear, params.shear, fill_mode="constant", seed=seed + 3))
    if params.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 4))
    return keras.Sequential(layers, name="augment")


def make_dataset(pixels: np.ndarray, subset: Subset, batch_size: int, shuffle: bool = False,
                 seed: int = 0, augment: keras.Sequential | None = None) -> tf.data.Dataset:
    """Batches of ``(images float32 (b, s, s, 1) in 0..255, targets)`` from the cache.

    Indices are shuffled and batched first; each batch is then one fancy-index
    into the memory-mapped cache (no per-image decode or file open).
    """
    rows, y = subset.rows, subset.y.astype(np.float32)
    size = pixels.shape[1]

    def gather(idx):
        return np.asarray(pixels[rows[idx]])[..., None], y[idx]

    def load(idx):
        images, targets = tf.numpy_function(gather, [idx], (tf.uint8, tf.float32), stateful=False)
        images.set_shape((None, size, size, 1))
        targets.set_shape((None, y.shape[1]))
        return tf.cast(images, tf.float32), targets

    ds = tf.data.Dataset.range(len(rows))
    if shuffle:
        ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    # A plain map: op determinism would turn a parallel one sequential anyway (and
    # log an error per epoch doing so); prefetch still overlaps it with training.
    ds = ds.batch(batch_size).map(load)
    if augment is not None:
        # Sequential on purpose: Keras random layers draw from one seed stream, and
        # a fixed call order keeps two runs identical. It runs ahead via prefetch.
        ds = ds.map(lambda x, t: (tf.clip_by_value(augment(x, training=True), 0.0, 255.0), t))
    return ds.prefetch(tf.data.AUTOTUNE)


# --- fit loop ---

BN_RECALIBRATION_IMAGES = 64  # train images whose statistics a from-scratch backbone's BatchNorm gets


def _nested_layers(layer: keras.layers.Layer):
    for child in getattr(layer, "layers", ()):
        yield child
        yield from _nested_layers(child)


def recalibrate_batch_norm(model: keras.Model, images: np.ndarray) -> None:
    """Set every BatchNorm layer's moving mean and variance to those of ``images``
    (one forward pass in training mode with momentum 0).

    A from-scratch backbone trains only a few hundred steps here; with Keras's
    momentum of 0.99 its moving statistics are still mostly the initial 0 / 1
    when an epoch ends, and in inference mode the model then gives every image
    the same output (measured on MobileNet: validation predictions varied by
    1e-15 in inference mode, 0.56 in logit in training mode). Only the
    statistics change; the weights the optimizer trains are untouched.
    """
    layers = [layer for layer in _nested_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        model(np.asarray(images, dtype=np.float32), training=True)
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum


class ValidationScores(keras.callbacks.Callback):
    """Exact val loss and mean AUROC (scikit-learn) after each epoch, written into ``logs``.

    It must come before EarlyStopping / ReduceLROnPlateau in the callback
    list: they read ``val_auroc`` from the same ``logs``. It also keeps the
    best epoch's weights across both training phases.
    """

    def __init__(self, data: tf.data.Dataset, y: np.ndarray, batch_norm_images: np.ndarray | None = None):
        super().__init__()
        self.data, self.y = data, y
        self.batch_norm_images = batch_norm_images  # recalibrate BatchNorm on these before scoring
        self.rows: list[dict] = []
        self.best: dict | None = None
        self.best_weights = None
        self.best_predictions: np.ndarray | None = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.batch_norm_images is not None:
            recalibrate_batch_norm(self.model, self.batch_norm_images)
        p = self.model.predict(self.data, verbose=0)
        auroc = mean_auroc(self.y, p)
        logs["val_loss"] = binary_crossentropy(self.y, p)
        logs["val_auroc"] = auroc if auroc is not None else float("nan")
        lr = self.model.optimizer.learning_rate
        row = {"epoch": epoch + 1, "loss": float(logs["loss"]), "auroc": float(logs.get("auroc", float("nan"))),
               "val_loss": logs["val_loss"], "val_auroc": logs["val_auroc"],
               "learning_rate": float(keras.ops.convert_to_numpy(lr))}
        self.rows.append(row)
        if self.best is None or (auroc is not None and not row["val_auroc"] <= self.best["val_auroc"]):
            self.best = row
            self.best_weights = self.model.get_weights()
            self.best_predictions = p


def _optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    return {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop,
            "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9)}[name](learning_rate)


def _set_backbone_trainable(model: keras.Model, layers: int | str | None) -> None:
    """``None``: backbone frozen; ``'all'``: all trainable; n: only its top n layers."""
    backbone = model.get_layer("backbone")
    backbone.trainable = layers is not None
    if isinstance(layers, int):
        for layer in backbone.layers[:-layers]:
            layer.trainable = False


@dataclass
class TrainResult:
    model: keras.Model
    history: list[dict]
    best: dict
    epochs_run: int
    val_predictions: np.ndarray  # of the kept (best) epoch
    seconds: float
    images_per_second: float


def fit_linear_model(dataset: Dataset, params: LinearParams, size: int, name: str = "linear") -> TrainResult:
    """Fit a ``linear`` variant on the train split in one pass (cxr.models.linear);
    its history is that one 'epoch', scored like a trained model's."""
    from cxr.models.linear import fit_linear, thumbnails

    started = time.perf_counter()
    train, val = dataset.splits["train"], dataset.splits["val"]
    model = build_model(params.family, size, len(dataset.targets), name=name,
                        thumbnail=params.size, components=params.components)
    fit_linear(model, thumbnails(dataset.pixels, train.rows, params.size), train.y, params.C)
    seconds = time.perf_counter() - started

    def scores(subset):
        p = model.predict(make_dataset(dataset.pixels, subset, 256), verbose=0)
        return p, binary_crossentropy(subset.y, p), mean_auroc(subset.y, p)

    _, train_loss, train_auroc = scores(train)
    val_p, val_loss, val_auroc = scores(val)
    nan = float("nan")
    row = {"epoch": 1, "loss": train_loss, "auroc": nan if train_auroc is None else train_auroc,
           "val_loss": val_loss, "val_auroc": nan if val_auroc is None else val_auroc}
    return TrainResult(model=model, history=[row], best=row, epochs_run=1, val_predictions=val_p,
                       seconds=seconds, images_per_second=len(train) / seconds)


def train_model(dataset: Dataset, model_params: VariantParams, train_params: TrainParams, size: int,
                name: str = "model", callbacks: Sequence[keras.callbacks.Callback] = (),
                strategy: tf.distribute.Strategy | None = None, verbose: int = 2) -> TrainResult:
    """Build and fit one model on ``dataset``'s train split, scored on val each epoch.

    Two phases for backbone families: ``freeze_epochs`` with the backbone
    frozen at ``learning_rate``, then ``finetune_layers`` of it unfrozen at
    ``finetune_learning_rate``. The best epoch by val AUROC is kept. A
    ``linear`` variant is fitted instead (``fit_linear_model``).
    """
    if isinstance(model_params, LinearParams):
        return fit_linear_model(dataset, model_params, size, name)
    policy = train_params.mixed_precision
    if policy == "none":
        return _train_network(dataset, model_params, train_params, size, name, callbacks, strategy, verbose)
    keras.mixed_precision.set_global_policy(policy)
    try:
        result = _train_network(dataset, model_params, train_params, size, name, callbacks, strategy, verbose)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # Mixed precision speeds up training only: its variables are float32 already, and the model
    # is kept (saved, evaluated, exported) computing in float32.
    mp = model_params
    model = build_model(mp.family, size, len(dataset.targets), name=name, dropout=mp.dropout, weights=mp.weights)
    model.set_weights(result.model.get_weights())
    return dataclasses.replace(result, model=model)


def _train_network(dataset: Dataset, mp: ModelParams, tp: TrainParams, size: int, name: str,
                   callbacks: Sequence[keras.callbacks.Callback], strategy: tf.distribute.Strategy | None,
                   verbose: int) -> TrainResult:
    set_determinism(tp.seed)
    strategy = strategy or tf.distribute.get_strategy()
    train, val = dataset.splits["train"], dataset.splits["val"]
    targets = len(dataset.targets)
    with strategy.scope():
        model = build_model(mp.family, size, targets, name=name, dropout=mp.dropout, weights=mp.weights)
        if keras.mixed_precision.global_policy().name != "float32":
            # The sigmoid and the loss stay float32 (Keras's mixed-precision advice).
            model.get_layer("probabilities").dtype_policy = keras.DTypePolicy("float32")
    if tp.class_weighting == "balanced":
        loss = WeightedBinaryCrossentropy(*balanced_class_weights(train.y))
    else:
        loss = keras.losses.BinaryCrossentropy()
    train_ds = make_dataset(dataset.pixels, train, tp.batch_size, shuffle=True, seed=tp.seed,
                            augment=augmentation(tp.augment, tp.seed))
    backbone = MODELS[mp.family].backbone
    batch_norm_images = None
    if backbone and mp.weights is None:  # pretrained backbones keep their ImageNet statistics
        pick = np.sort(np.random.default_rng(tp.seed).permutation(len(train))[:BN_RECALIBRATION_IMAGES])
        batch_norm_images = dataset.pixels[train.rows[pick]][..., None]
    scores = ValidationScores(make_dataset(dataset.pixels, val, tp.batch_size * 4), val.y, batch_norm_images)
    stop = keras.callbacks.EarlyStopping("val_auroc", mode="max", patience=tp.early_stopping_patience)
    reduce = keras.callbacks.ReduceLROnPlateau("val_auroc", mode="max", factor=0.5,
                                               patience=tp.reduce_lr_patience, min_lr=1e-6)
    all_callbacks = [scores, stop, reduce, *callbacks]

    phases = []
    if backbone and mp.freeze_epochs:
        phases.append((None, mp.learning_rate, mp.freeze_epochs))
        phases.append((mp.finetune_layers, mp.finetune_learning_rate, mp.epochs))
    else:
        phases.append(("all", mp.learning_rate, mp.epochs))

    started, epoch = time.perf_counter(), 0
    for trainable, lr, until in phases:
        if backbone:
            _set_backbone_trainable(model, trainable)
        with strategy.scope():
            model.compile(optimizer=_optimizer(tp.optimizer, lr), loss=loss,
                          metrics=[keras.metrics.AUC(multi_label=True, num_labels=targets, name="auroc")])
        model.fit(train_ds, initial_epoch=epoch, epochs=until, callbacks=all_callbacks,
                  shuffle=False, verbose=verbose)  # tf.data already shuffles
        epoch = len(scores.rows)  # EarlyStopping may end a phase early; the next starts from here
    seconds = time.perf_counter() - started
    model.set_weights(scores.best_weights)
    return TrainResult(model=model, history=scores.rows, best=scores.best, epochs_run=len(scores.rows),
                       val_predictions=scores.best_predictions, seconds=seconds, images_per_second=len(train) * len(scores.rows) / seconds)


# --- saving ---

_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _renumber_shared_objects(config):
    """Keras names objects shared between layers (the dtype policy) by their Python ``id()``,
    a memory address that differs in every process; number them in order of appearance."""
    ids: dict[int, int] = {}

    def walk(node):
        if isinstance(node, dict):
            return {k: ids.setdefault(v, len(ids) + 1) if k == "shared_object_id" else walk(v)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return walk(config)


def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Save a ``.keras`` file whose bytes depend only on the model.

    Keras stamps the save date into ``metadata.json`` and the zip entries, and
    memory addresses into ``config.json``; all are fixed here, so retraining to
    identical weights (in any process) produces an identical file and DVC does
    not rerun everything downstream. Saved
    without its loss/optimizer: the file is for inference and export.
    """
    inference = keras.Model(model.inputs, model.outputs, name=model.name)
    with atomic_path(path) as tmp:
        raw = tmp.with_suffix(".raw.keras")
        inference.save(raw)
        with zipfile.ZipFile(raw) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in sorted(src.infolist(), key=lambda i: i.filename):
                data = src.read(info)
                if info.filename == "metadata.json":
                    meta = json.loads(data)
                    meta["date_saved"] = "1980-01-01@00:00:00"
                    data = json.dumps(meta, sort_keys=True).encode()
                elif info.filename == "config.json":
                    data = json.dumps(_renumber_shared_objects(json.loads(data)), sort_keys=True).encode()
                entry = zipfile.ZipInfo(info.filename, date_time=_FIXED_ZIP_TIME)
                entry.compress_type = zipfile.ZIP_DEFLATED
                dst.writestr(entry, data)
        raw.unlink()


def history_rows_to_csv(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = [",".join(keys)] + [",".join(_fmt(r[k]) for k in keys) for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:.6g}"

