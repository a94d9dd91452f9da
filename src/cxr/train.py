"""Training: the tf.data feed from the resize cache, the fit loop, determinism."""
from __future__ import annotations

import dataclasses
import hashlib
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

from cxr.augment import augment_stream  # noqa: E402
from cxr.data.dataset import Dataset, Subset  # noqa: E402
from cxr.data.labels import Decision, any_target  # noqa: E402
from cxr.errors import CxrError  # noqa: E402
from cxr.evaluate import crossentropy, mean_auroc  # noqa: E402
from cxr.features import head_model  # noqa: E402
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


def balanced_class_weights_exclusive(y: np.ndarray) -> np.ndarray:
    """Per-class weights for one-hot classes, each class counting equally: n / (classes * n_c)
    (scikit-learn's 'balanced'); a class absent from train keeps 1."""
    counts = np.asarray(y, dtype=np.float64).sum(axis=0)
    return np.where(counts > 0, len(y) / (len(counts) * np.maximum(counts, 1)), 1.0).astype(np.float32)


class SamplingError(CxrError):
    """A train split that the sampling asked for cannot be drawn from."""


def undersample(subset: Subset, seed: int, decision: Decision) -> Subset:
    """The subset with as many decision negatives as positives: every image of the smaller
    side and a seeded random draw of the larger, in their original order. Whole images are
    dropped, so it is balanced once for all epochs."""
    positive = decision.truth(subset.y) > 0
    small, large = sorted((np.flatnonzero(positive), np.flatnonzero(~positive)), key=len)
    if not len(small):
        side = "positive" if positive.any() else "negative"
        raise SamplingError(f"train.sampling: undersample: the train split has only {side} images")
    keep = np.sort(np.concatenate([small, np.random.default_rng(seed).choice(large, len(small), replace=False)]))
    return dataclasses.replace(subset, names=subset.names[keep], rows=subset.rows[keep], y=subset.y[keep],
                               patients=subset.patients[keep])


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


@keras.saving.register_keras_serializable(package="cxr")
class WeightedCategoricalCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy (one softmax over classes) with a weight per class."""

    def __init__(self, class_weights, name="weighted_cce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        ops = keras.ops
        p = ops.clip(y_pred, keras.config.epsilon(), 1.0)
        w = ops.convert_to_tensor(self.class_weights, dtype=p.dtype)
        return -ops.sum(w * ops.cast(y_true, p.dtype) * ops.log(p), axis=-1)

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


def training_loss(y: np.ndarray, weighting: str, exclusive: bool) -> keras.losses.Loss:
    """Cross-entropy for the outputs (binary per sigmoid, categorical for one softmax),
    per-class weighted from the train targets ``y`` when ``weighting`` is 'balanced'."""
    if weighting == "balanced":
        return (WeightedCategoricalCrossentropy(balanced_class_weights_exclusive(y)) if exclusive
                else WeightedBinaryCrossentropy(*balanced_class_weights(y)))
    return keras.losses.CategoricalCrossentropy() if exclusive else keras.losses.BinaryCrossentropy()


# --- input pipeline ---

def make_dataset(pixels: np.ndarray, subset: Subset, batch_size: int, shuffle: bool = False,
                 seed: int = 0, augment: AugmentParams | None = None, repeat: bool = False,
                 shard: tuple[int, int] = (1, 0)) -> tf.data.Dataset:
    """Batches of ``(images float32 (b, s, s, 1) in 0..255, targets)`` from the cache
    (or of ``(features (b, d), targets)`` from a feature cache: ``pixels`` of shape (N, d)).

    Indices are shuffled and batched first; each batch is then one read of its
    rows from the cache (no per-image decode or file open). ``repeat``: an
    endless stream, reshuffled each pass (for a fixed number of steps per
    epoch). ``shard=(n, i)``: the i-th of n disjoint shards of that stream.
    ``augment``: each batch moved by random affine transforms drawn from ``seed``.
    """
    rows, y = subset.rows, subset.y.astype(np.float32)
    of_images = len(pixels.shape) == 3
    shape = (None, *pixels.shape[1:], 1) if of_images else (None, *pixels.shape[1:])
    dtype = tf.uint8 if of_images else tf.float32

    def gather(idx):
        got = np.asarray(pixels[rows[idx]])
        return got[..., None] if of_images else got, y[idx]

    def load(idx):
        inputs, targets = tf.numpy_function(gather, [idx], (dtype, tf.float32), stateful=False)
        inputs.set_shape(shape)
        targets.set_shape((None, y.shape[1]))
        return tf.cast(inputs, tf.float32), targets

    ds = tf.data.Dataset.range(len(rows))
    if shuffle:
        ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if shard[0] > 1:
        # Every worker draws the same seeded order and keeps every n-th image of it: the shards
        # are disjoint, and each worker reads only its own rows of the cache.
        ds = ds.shard(*shard)
    # A plain map: op determinism would turn a parallel one sequential anyway (and
    # log an error per epoch doing so); prefetch still overlaps it with training.
    ds = ds.batch(batch_size).map(load)
    if augment is not None and augment.enabled:
        ds = augment_stream(ds, augment, seed + shard[1])  # each worker its own transforms
    return ds.prefetch(tf.data.AUTOTUNE)


# --- more than one machine ---

class ClusterError(CxrError):
    """TF_CONFIG missing or not a cluster this process can join."""


@dataclass(frozen=True)
class Worker:
    """This process's place in a multi-worker cluster (from TF_CONFIG)."""
    index: int
    workers: int
    chief: bool   # the one that saves the model and logs the run


def cluster_worker(environ: dict | None = None) -> Worker:
    """Parse TF_CONFIG (TensorFlow's own cluster description) for ``train.distribute: multi_worker``.

    ``{"cluster": {"worker": ["host1:port", ...]}, "task": {"type": "worker", "index": i}}``;
    worker 0 is the chief unless the cluster names a ``chief`` task.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG")
    need = 'TF_CONFIG: expected {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}'
    if not raw:
        raise ClusterError(f"train.distribute: multi_worker needs {need} in the environment")
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task["index"])
        hosts = [h for role in ("chief", "worker") for h in cluster.get(role, [])]
        if kind not in ("chief", "worker") or not 0 <= index < len(cluster[kind]):
            raise ValueError(f"task {kind} {index} not in the cluster")
    except (ValueError, KeyError, TypeError) as e:
        raise ClusterError(f"{need}, got {raw!r} ({e})") from None
    chief = kind == "chief" or ("chief" not in cluster and index == 0)
    return Worker(index=index if kind == "worker" else 0, workers=len(hosts), chief=chief)


def worker_shard(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """``(workers, this worker's position)`` in a multi-worker strategy's cluster."""
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec()
    tasks = [(kind, i) for kind in ("chief", "worker") if kind in spec.jobs for i in range(spec.num_tasks(kind))]
    return len(tasks), tasks.index((resolver.task_type, resolver.task_id))


def fit_across_workers(model: keras.Model, strategy: tf.distribute.Strategy, data: tf.data.Dataset,
                       initial_epoch: int, epochs: int, steps: int, global_batch: int,
                       callbacks: Sequence[keras.callbacks.Callback]) -> None:
    """``Model.fit`` for a multi-worker strategy: a compiled model, its optimizer built, trained on
    ``data`` (this worker's shard, endless) for ``steps`` per epoch, with the callbacks fit would call
    at each epoch.

    Keras 3's own ``fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585; here with
    Keras 3.15: it reduces a tuple of per-replica values, then scalar metrics along axis 0), so the
    step is TensorFlow's custom-loop recipe: ``strategy.run`` per replica, loss averaged over the
    global batch, gradients summed across workers by the optimizer.
    """
    loss_fn, optimizer = model.loss, model.optimizer
    batches = iter(strategy.experimental_distribute_dataset(data))

    @tf.function
    def step():
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                per_image = loss_fn.call(y, model(x, training=True))
                loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch)
            variables = model.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss
        return strategy.reduce("SUM", strategy.run(replica_step, args=next(batches)), axis=None)

    hooks = keras.callbacks.CallbackList(list(callbacks), model=model)
    model.stop_training = False
    hooks.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        hooks.on_epoch_begin(epoch)
        loss = float(np.mean([float(step()) for _ in range(steps)]))
        hooks.on_epoch_end(epoch, {"loss": loss})
        if model.stop_training:
            break
    hooks.on_train_end()


def _predict_each_batch(model: keras.Model, data: tf.data.Dataset) -> np.ndarray:
    """The model's outputs over ``data``, batch by batch in this process: under a multi-worker
    strategy, ``Model.predict`` would split ``data`` across the workers."""
    return np.concatenate([keras.ops.convert_to_numpy(model(x, training=False)) for x, _ in data])


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
    best epoch's weights of ``kept`` (the whole model, also while a phase fits
    only its head on bottleneck features) across both training phases: each
    phase says what it is scored on with ``feed`` before it starts.
    """

    def __init__(self, y: np.ndarray, predict=None, exclusive: bool = False):
        super().__init__()
        self.y, self.exclusive = y, exclusive
        self.predict = predict or (lambda model, data: model.predict(data, verbose=0))
        self.rows: list[dict] = []
        self.best: dict | None = None
        self.best_weights = None
        self.best_predictions: np.ndarray | None = None

    def feed(self, data: tf.data.Dataset, kept: keras.Model, batch_norm_images: np.ndarray | None) -> None:
        """What the next phase is scored on (``data``; BatchNorm first recalibrated on
        ``batch_norm_images`` when given) and the model whose weights are kept."""
        self.data, self.kept, self.batch_norm_images = data, kept, batch_norm_images

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.batch_norm_images is not None:
            recalibrate_batch_norm(self.model, self.batch_norm_images)
        p = self.predict(self.model, self.data)
        auroc = mean_auroc(self.y, p)
        logs["val_loss"] = crossentropy(self.y, p, self.exclusive)
        logs["val_auroc"] = auroc if auroc is not None else float("nan")
        lr = self.model.optimizer.learning_rate
        row = {"epoch": epoch + 1, "loss": float(logs["loss"]), "auroc": float(logs.get("auroc", float("nan"))),
               "val_loss": logs["val_loss"], "val_auroc": logs["val_auroc"],
               "learning_rate": float(keras.ops.convert_to_numpy(lr))}
        self.rows.append(row)
        if self.best is None or (auroc is not None and not row["val_auroc"] <= self.best["val_auroc"]):
            self.best = row
            self.best_weights = self.kept.get_weights()
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
    train_images: int            # those trained on (after train.sampling)


def fit_linear_model(dataset: Dataset, params: LinearParams, size: int, name: str = "linear",
                     exclusive: bool = False) -> TrainResult:
    """Fit a ``linear`` variant on the train split in one pass (cxr.models.linear);
    its history is that one 'epoch', scored like a trained model's. ``exclusive``:
    one multinomial regression over the classes (softmax), else one per target."""
    from cxr.models.linear import fit_linear, thumbnails

    started = time.perf_counter()
    train, val = dataset.splits["train"], dataset.splits["val"]
    model = build_model(params.family, size, len(dataset.targets), name=name,
                        thumbnail=params.size, components=params.components, activation=_activation(exclusive))
    fit_linear(model, thumbnails(dataset.pixels, train.rows, params.size), train.y, params.C)
    seconds = time.perf_counter() - started

    def scores(subset):
        p = model.predict(make_dataset(dataset.pixels, subset, 256), verbose=0)
        return p, crossentropy(subset.y, p, exclusive), mean_auroc(subset.y, p)

    _, train_loss, train_auroc = scores(train)
    val_p, val_loss, val_auroc = scores(val)
    nan = float("nan")
    row = {"epoch": 1, "loss": train_loss, "auroc": nan if train_auroc is None else train_auroc,
           "val_loss": val_loss, "val_auroc": nan if val_auroc is None else val_auroc}
    return TrainResult(model=model, history=[row], best=row, epochs_run=1, val_predictions=val_p,
                       seconds=seconds, images_per_second=len(train) / seconds, train_images=len(train))


def train_model(dataset: Dataset, model_params: VariantParams, train_params: TrainParams, size: int,
                name: str = "model", callbacks: Sequence[keras.callbacks.Callback] = (),
                strategy: tf.distribute.Strategy | None = None, verbose: int = 2,
                decision: Decision | None = None, features: np.ndarray | None = None) -> TrainResult:
    """Build and fit one model on ``dataset``'s train split, scored on val each epoch.

    Two phases for backbone families: ``freeze_epochs`` with the backbone
    frozen at ``learning_rate``, then ``finetune_layers`` of it unfrozen at
    ``finetune_learning_rate`` (none if ``freeze_epochs`` equals ``epochs``).
    The best epoch by val AUROC is kept. ``decision``: the task's yes/no call
    (default: any target positive); its ``exclusive`` makes the outputs one
    softmax. ``train.sampling: undersample`` trains on a draw of the train
    split balanced on the decision (``undersample``). A ``linear`` variant is
    fitted instead (``fit_linear_model``). ``features``: the frozen backbone's
    output for every cache row (``cxr.features``): the frozen epochs then fit
    only the head on them (not under a distribution strategy).
    """
    decision = decision or any_target(len(dataset.targets))
    if train_params.sampling == "undersample":
        balanced = undersample(dataset.splits["train"], train_params.seed, decision)
        dataset = dataclasses.replace(dataset, splits={**dataset.splits, "train": balanced})
    if isinstance(model_params, LinearParams):
        return fit_linear_model(dataset, model_params, size, name, decision.exclusive)
    policy = train_params.mixed_precision
    if policy != "none":
        keras.mixed_precision.set_global_policy(policy)
    try:
        result = _train_network(dataset, model_params, train_params, size, name, callbacks, strategy, verbose,
                                decision.exclusive, None if strategy is not None else features)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if policy == "none" and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return result
    # The kept model (saved, evaluated, exported) is a plain float32 copy: mixed precision speeds up
    # training only (its variables are float32 already), and a multi-worker model's variables run
    # collectives with the other workers, which may have exited, whenever it predicts.
    model = build_network(model_params, size, len(dataset.targets), name, decision.exclusive)
    model.set_weights(result.model.get_weights())
    return dataclasses.replace(result, model=model)


def weights_sha256(model: keras.Model) -> str:
    """A digest of a model's weights (to check that workers ended with the same model)."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def _activation(exclusive: bool) -> str:
    return "softmax" if exclusive else "sigmoid"


def build_network(mp: ModelParams, size: int, outputs: int, name: str, exclusive: bool = False) -> keras.Model:
    """The registry's model for a network variant's params (``exclusive``: a softmax over the outputs)."""
    return build_model(mp.family, size, outputs, name=name, dropout=mp.head.dropout, head_units=mp.head.units,
                       weights=mp.weights, activation=_activation(exclusive))


def _train_network(dataset: Dataset, mp: ModelParams, tp: TrainParams, size: int, name: str,
                   callbacks: Sequence[keras.callbacks.Callback], strategy: tf.distribute.Strategy | None,
                   verbose: int, exclusive: bool, features: np.ndarray | None) -> TrainResult:
    set_determinism(tp.seed)
    strategy = strategy or tf.distribute.get_strategy()
    train, val = dataset.splits["train"], dataset.splits["val"]
    targets = len(dataset.targets)
    with strategy.scope():
        model = build_network(mp, size, targets, name, exclusive)
        if keras.mixed_precision.global_policy().name != "float32":
            # The sigmoid and the loss stay float32 (Keras's mixed-precision advice).
            model.get_layer("probabilities").dtype_policy = keras.DTypePolicy("float32")
    loss = training_loss(train.y, tp.class_weighting, exclusive)
    steps = tp.steps_per_epoch
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    predict = _predict_each_batch if multi_worker else None
    if multi_worker:
        # Every worker must take the same number of steps: an endless stream, cut into epochs. Each
        # worker reads its own shard, batched by the global batch size; TensorFlow rebatches it to
        # its replicas' share (batch_size / replicas), so a step sees batch_size images in all.
        steps = steps or max(len(train) // tp.batch_size, 1)
        train_ds = make_dataset(dataset.pixels, train, tp.batch_size, shuffle=True, seed=tp.seed, augment=tp.augment,
                                repeat=True, shard=worker_shard(strategy))
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        train_ds = train_ds.with_options(options)
    else:
        train_ds = make_dataset(dataset.pixels, train, tp.batch_size, shuffle=True, seed=tp.seed,
                                augment=tp.augment, repeat=steps is not None)
    backbone = MODELS[mp.family].backbone
    batch_norm_images = None
    if backbone and mp.weights is None:  # pretrained backbones keep their ImageNet statistics
        pick = np.sort(np.random.default_rng(tp.seed).permutation(len(train))[:BN_RECALIBRATION_IMAGES])
        batch_norm_images = dataset.pixels[train.rows[pick]][..., None]
    val_ds = make_dataset(dataset.pixels, val, tp.batch_size * 4)
    scores = ValidationScores(val.y, predict, exclusive)
    stop = keras.callbacks.EarlyStopping("val_auroc", mode="max", patience=tp.early_stopping_patience)
    reduce = keras.callbacks.ReduceLROnPlateau("val_auroc", mode="max", factor=0.5,
                                               patience=tp.reduce_lr_patience, min_lr=1e-6)
    all_callbacks = [scores, stop, reduce, *callbacks]

    phases = []
    if backbone and mp.freeze_epochs:
        phases.append((None, mp.learning_rate, mp.freeze_epochs))
        if mp.freeze_epochs < mp.epochs:   # equal: the backbone stays frozen throughout
            phases.append((mp.finetune_layers, mp.finetune_learning_rate, mp.epochs))
    else:
        phases.append(("all", mp.learning_rate, mp.epochs))

    started, epoch = time.perf_counter(), 0
    for trainable, lr, until in phases:
        if backbone:
            _set_backbone_trainable(model, trainable)
        fitted, data = model, train_ds
        if trainable is None and features is not None:
            # The backbone frozen: fit its head on the stored features (cxr.features), no backbone pass.
            fitted = head_model(model, features.shape[1])
            data = make_dataset(features, train, tp.batch_size, shuffle=True, seed=tp.seed, repeat=steps is not None)
            scores.feed(make_dataset(features, val, tp.batch_size * 4), model, None)
        else:
            scores.feed(val_ds, model, batch_norm_images)
        with strategy.scope():
            fitted.compile(optimizer=_optimizer(tp.optimizer, lr), loss=loss,
                           metrics=[keras.metrics.AUC(multi_label=True, num_labels=targets, name="auroc")])
            # Its slots made here, not in the first step: TensorFlow traces a step that creates
            # variables twice (MobileNet at 32 px: 3.6 s of a 15 s stage). Same weights either way.
            fitted.optimizer.build(fitted.trainable_variables)
        if multi_worker:
            fit_across_workers(fitted, strategy, data, epoch, until, steps, tp.batch_size, all_callbacks)
        else:
            fitted.fit(data, initial_epoch=epoch, epochs=until, steps_per_epoch=steps, callbacks=all_callbacks,
                       shuffle=False, verbose=verbose)  # tf.data already shuffles
        epoch = len(scores.rows)  # EarlyStopping may end a phase early; the next starts from here
    seconds = time.perf_counter() - started
    model.set_weights(scores.best_weights)
    per_epoch = steps * tp.batch_size if steps else len(train)
    return TrainResult(model=model, history=scores.rows, best=scores.best, epochs_run=len(scores.rows),
                       val_predictions=scores.best_predictions, seconds=seconds,
                       images_per_second=per_epoch * len(scores.rows) / seconds, train_images=len(train))


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

