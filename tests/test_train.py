"""The input pipeline, the loss, determinism, saving, and distributed training on CPU."""
import dataclasses
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT
from cxr.params import parse_params
from cxr.inference import load_model, predict
from cxr.train import (WeightedBinaryCrossentropy, balanced_class_weights, make_dataset, save_model, train_model,
                       weights_sha256)

PARAMS = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
NO_AUGMENT = dataclasses.replace(PARAMS.train.augment, rotation=0, shift=0, zoom=0, shear=0, horizontal_flip=False)


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_feed_without_augmentation_is_the_cache(small_dataset):
    train = small_dataset.splits["train"]
    batches = _batches(make_dataset(small_dataset.pixels, train, 16))
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and x.shape == (len(train), 32, 32, 1)
    np.testing.assert_array_equal(x[..., 0], small_dataset.pixels[train.rows])
    np.testing.assert_array_equal(y, train.y)


def test_shuffle_is_seeded_and_reshuffles_each_epoch(small_dataset):
    train = small_dataset.splits["train"]
    a = make_dataset(small_dataset.pixels, train, 8, shuffle=True, seed=3)
    b = make_dataset(small_dataset.pixels, train, 8, shuffle=True, seed=3)
    first_a, second_a = _batches(a), _batches(a)
    first_b = _batches(b)
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(first_a, first_b))
    assert not np.array_equal(first_a[0][0], second_a[0][0])


def test_augmentation_changes_pixels_within_range_repeatably_and_differently_each_epoch(small_dataset):
    train = small_dataset.splits["train"]
    aug = PARAMS.train.augment
    assert aug.enabled and not aug.horizontal_flip
    plain = _batches(make_dataset(small_dataset.pixels, train, 8))
    feeds = [make_dataset(small_dataset.pixels, train, 8, seed=5, augment=aug) for _ in range(2)]
    first, again = _batches(feeds[0]), _batches(feeds[1])
    second_epoch = _batches(feeds[0])
    assert first[0][0].shape == plain[0][0].shape and 0 <= first[0][0].min() and first[0][0].max() <= 255
    assert np.abs(first[0][0] - plain[0][0]).mean() > 1.0
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again))
    assert not np.array_equal(first[0][0], second_epoch[0][0])
    np.testing.assert_array_equal(first[0][1], plain[0][1])  # targets untouched
    unmoved = _batches(make_dataset(small_dataset.pixels, train, 8, seed=5, augment=NO_AUGMENT))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(unmoved, plain))


def test_balanced_weights_and_weighted_loss_by_hand():
    y = np.array([[1, 0], [0, 0], [0, 0], [0, 0]], dtype="float32")
    w_pos, w_neg = balanced_class_weights(y)
    np.testing.assert_allclose(w_pos, [0.75, 1.0])  # 3 negatives of 4; a class without positives keeps 1
    np.testing.assert_allclose(w_neg, [0.25, 1.0])
    loss = WeightedBinaryCrossentropy(w_pos, w_neg)
    p = np.array([[0.8, 0.1]] * 4, dtype="float32")
    by_hand = np.mean([-(0.75 * np.log(0.8)) / 2 + -np.log(0.9) / 2] + [(-(0.25 * np.log(0.2)) - np.log(0.9)) / 2] * 3)
    assert float(loss(y, p)) == pytest.approx(by_hand, rel=1e-5)
    assert WeightedBinaryCrossentropy.from_config(loss.get_config()).positive_weights == [0.75, 1.0]


def _tiny(epochs=2):
    model = dataclasses.replace(PARAMS.model("cnn"), epochs=epochs)
    train = dataclasses.replace(PARAMS.train, batch_size=32)
    return model, train


def test_steps_per_epoch_bounds_each_epoch_and_continues_the_shuffled_stream(small_dataset):
    import keras

    batches = []

    class Count(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            batches.append(0)

        def on_train_batch_end(self, batch, logs=None):
            batches[-1] += 1

    model_params, train_params = _tiny(epochs=2)
    result = train_model(small_dataset, model_params, dataclasses.replace(train_params, batch_size=8, steps_per_epoch=3),
                         32, "cnn", callbacks=[Count()], verbose=0)
    assert batches == [3, 3] and result.epochs_run == 2
    # An endless stream: the second epoch goes on where the first stopped, the order still seeded.
    train = small_dataset.splits["train"]
    stream = make_dataset(small_dataset.pixels, train, 8, shuffle=True, seed=3, repeat=True)
    first = [x.numpy() for x, _ in stream.take(len(train) // 8 + 2)]
    again = [x.numpy() for x, _ in make_dataset(small_dataset.pixels, train, 8, shuffle=True, seed=3,
                                                 repeat=True).take(len(first))]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_worker_shards_are_disjoint_and_cover_the_split(small_dataset):
    train = small_dataset.splits["train"]
    shards = [[x.numpy().astype(np.uint8).tobytes() for batch, _ in make_dataset(
        small_dataset.pixels, train, 4, shuffle=True, seed=1, shard=(2, i)) for x in batch] for i in range(2)]
    assert len(shards[0]) + len(shards[1]) == len(train) and abs(len(shards[0]) - len(shards[1])) <= 1
    whole = sorted(image[..., None].tobytes() for image in small_dataset.pixels[train.rows])
    assert sorted(shards[0] + shards[1]) == whole


def test_same_params_same_val_auroc_and_same_model_bytes(small_dataset, tmp_path):
    model_params, train_params = _tiny()
    results = [train_model(small_dataset, model_params, train_params, 32, "cnn", verbose=0) for _ in range(2)]
    assert results[0].best["val_auroc"] == pytest.approx(results[1].best["val_auroc"], abs=1e-6)
    assert [r["loss"] for r in results[0].history] == [r["loss"] for r in results[1].history]
    for i, r in enumerate(results):
        save_model(r.model, tmp_path / f"{i}.keras")
    digest = [hashlib.sha256((tmp_path / f"{i}.keras").read_bytes()).hexdigest() for i in range(2)]
    assert digest[0] == digest[1]
    loaded = load_model(tmp_path / "0.keras")
    x = small_dataset.images("val")[:4]
    np.testing.assert_allclose(predict(loaded, x), predict(results[0].model, x), rtol=1e-5, atol=1e-6)
    assert results[0].epochs_run == 2 and len(results[0].history) == 2


SAVE_IN_A_NEW_PROCESS = """
import sys
from cxr.models import build_model
from cxr.train import save_model, set_determinism
set_determinism(0)
save_model(build_model("mobilenet", 32, 14, dropout=0.2), sys.argv[1])
"""


@pytest.mark.pipeline  # two fresh TensorFlow processes
def test_the_same_model_saved_by_two_processes_has_the_same_bytes(tmp_path):
    """Keras writes memory addresses (shared_object_id) into config.json; save_model renumbers them."""
    paths = [tmp_path / f"{i}.keras" for i in range(2)]
    for path in paths:
        subprocess.run([sys.executable, "-c", SAVE_IN_A_NEW_PROCESS, str(path)], check=True, capture_output=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert paths[0].read_bytes() == paths[1].read_bytes()
    x = np.full((2, 32, 32, 1), 128, np.float32)
    np.testing.assert_array_equal(predict(load_model(paths[0]), x), predict(load_model(paths[1]), x))


def test_two_phase_transfer_learning_freezes_then_unfreezes(small_dataset):
    model_params = dataclasses.replace(PARAMS.model("mobilenet"), epochs=2, freeze_epochs=1, finetune_layers=5)
    r = train_model(small_dataset, model_params, dataclasses.replace(PARAMS.train, batch_size=64), 32,
                    "mobilenet", verbose=0)
    backbone = r.model.get_layer("backbone")
    trainable = [layer.trainable for layer in backbone.layers]
    assert trainable[-5:] == [True] * 5 and not any(trainable[:-5])
    assert [h["learning_rate"] for h in r.history] == pytest.approx(
        [model_params.learning_rate, model_params.finetune_learning_rate])


def test_a_backbone_frozen_for_every_epoch_trains_only_its_head_on_a_balanced_draw(small_dataset):
    model_params = dataclasses.replace(PARAMS.model("mobilenet"), epochs=1, freeze_epochs=1)
    train_params = dataclasses.replace(PARAMS.train, batch_size=64, sampling="undersample")
    r = train_model(small_dataset, model_params, train_params, 32, "mobilenet", verbose=0)
    assert not any(layer.trainable for layer in r.model.get_layer("backbone").layers)
    assert [h["learning_rate"] for h in r.history] == pytest.approx([model_params.learning_rate])
    positives = int((small_dataset.splits["train"].y.max(axis=1) > 0).sum())
    assert r.train_images == 2 * min(positives, len(small_dataset.splits["train"]) - positives)


def test_undersampling_keeps_the_smaller_side_and_a_seeded_draw_of_the_larger(full_metadata):
    from cxr.data import FINDINGS
    from cxr.data.dataset import Subset
    from cxr.data.labels import Decision, any_target, multi_hot
    from cxr.train import SamplingError, undersample
    rows = full_metadata.head(3000)
    y = multi_hot(rows["Finding Labels"])[list(FINDINGS)].to_numpy(np.float32)
    subset = Subset(names=rows["Image Index"].to_numpy(), rows=np.arange(len(rows)), y=y,
                    patients=rows["Patient ID"].to_numpy())
    positive = y.max(axis=1) > 0
    small = min(positive.sum(), (~positive).sum())
    drawn = undersample(subset, 1, any_target(len(FINDINGS)))
    assert len(drawn) == 2 * small and (drawn.y.max(axis=1) > 0).sum() == small
    assert set(subset.names[positive]) <= set(drawn.names)          # every positive (here the smaller side) kept
    assert list(drawn.rows) == sorted(drawn.rows)                    # original order
    np.testing.assert_array_equal(drawn.y, y[drawn.rows])            # rows, labels and patients stay together
    assert list(drawn.patients) == list(subset.patients[drawn.rows])
    assert list(undersample(subset, 1, any_target(len(FINDINGS))).names) == list(drawn.names)
    assert list(undersample(subset, 2, any_target(len(FINDINGS))).names) != list(drawn.names)
    with pytest.raises(SamplingError, match="^train.sampling: undersample: the train split has only negative images$"):
        undersample(dataclasses.replace(subset, y=np.zeros_like(y)), 0, any_target(len(FINDINGS)))
    # The decision decides the sides: Effusion against the rest, not any finding.
    effusion = undersample(subset, 1, Decision("Effusion", "no Effusion", (FINDINGS.index("Effusion"),)))
    has = y[:, FINDINGS.index("Effusion")] > 0
    assert len(effusion) == 2 * has.sum() and set(subset.names[has]) <= set(effusion.names)


MIRRORED = """
import dataclasses, yaml
from cxr.train import split_cpu, train_model
import tensorflow as tf
strategy = tf.distribute.MirroredStrategy(split_cpu(2))
from cxr.params import parse_params
from cxr.data.dataset import load_dataset
from cxr.data import FINDINGS
p = parse_params(yaml.safe_load(open({params!r})))
ds = load_dataset({root!r} + "/cache", {root!r} + "/labels.csv", {root!r} + "/splits.csv", FINDINGS)
r = train_model(ds, dataclasses.replace(p.model("cnn"), epochs=1),
                dataclasses.replace(p.train, batch_size=32, distribute="mirrored"), 32, "cnn",
                strategy=strategy, verbose=0)
print("replicas", strategy.num_replicas_in_sync, "val_auroc", r.best["val_auroc"])
"""


def test_mirrored_strategy_on_two_logical_cpus(small_data_dir):
    """A fresh process: the CPU can only be split before TensorFlow starts."""
    code = MIRRORED.format(params=str(ROOT / "params.yaml"), root=str(small_data_dir))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "replicas 2" in proc.stdout


def test_a_split_is_read_lazily_and_predicted_in_chunks_as_in_one_call(small_dataset, monkeypatch):
    """Evaluate and export never hold a whole split as float: same outputs as one Model.predict."""
    from cxr import inference
    from cxr.models import build_model

    images = small_dataset.images("test")
    assert images.shape == (len(small_dataset.splits["test"]), 32, 32, 1) and not isinstance(images, np.ndarray)
    whole = np.asarray(small_dataset.pixels[small_dataset.splits["test"].rows])[..., None]
    np.testing.assert_array_equal(images[5:9], whole[5:9])
    np.testing.assert_array_equal(images[[7, 2]], whole[[7, 2]])
    np.testing.assert_array_equal(images[3], whole[3])
    model = build_model("cnn", 32, 14, dropout=0.5)
    monkeypatch.setattr(inference, "PREDICT_CHUNK", 40)   # chunks of 32 images: batches of 16, 2 per chunk
    chunked = inference.predict(model, images, batch_size=16)
    np.testing.assert_array_equal(chunked, model.predict(whole.astype(np.float32), batch_size=16, verbose=0))


def test_mixed_precision_trains_in_bfloat16_and_keeps_a_float32_model(small_dataset):
    import keras

    seen = []

    class ComputeDtype(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((self.model.get_layer("conv1").compute_dtype, self.model.get_layer("probabilities").compute_dtype))

    model_params, train_params = _tiny(epochs=1)
    result = train_model(small_dataset, model_params, dataclasses.replace(train_params, mixed_precision="mixed_bfloat16"),
                         32, "cnn", callbacks=[ComputeDtype()], verbose=0)
    assert set(seen) == {("bfloat16", "float32")}      # convolutions in bfloat16, the sigmoid in float32
    assert keras.mixed_precision.global_policy().name == "float32"   # restored for whatever runs next
    assert {layer.compute_dtype for layer in result.model.layers} == {"float32"}
    p = predict(result.model, small_dataset.images("val"))
    assert np.isfinite(p).all() and 0 <= result.best["val_auroc"] <= 1


def _free_ports(n: int) -> list[int]:
    import socket
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_localhost_train_one_model_together(tiny_copy):
    """train.distribute: multi_worker: two processes (TF_CONFIG) train cnn in step, each on its
    shard; the chief writes the model and the metrics, the other worker writes nothing."""
    import json

    from conftest import edit_params, project_env

    project = tiny_copy
    edit_params(project, lambda p: p["train"].update(distribute="multi_worker", steps_per_epoch=3, batch_size=16))
    written = (project / "models" / "cnn" / "model.keras", project / "reports" / "timings" / "train" / "cnn.json")
    for path in written:   # the tiny project's, removed as `dvc repro` removes a stage's outputs
        path.unlink()
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = [subprocess.Popen(
        [sys.executable, "stages/train.py", "cnn"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**project_env(project), "TF_CONFIG": json.dumps(
            {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})}) for i in range(2)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "train@cnn: best epoch 1 of 1" in outs[0][0]
    # Gradients were summed across the workers: both ended with the model the chief saved.
    model = load_model(written[0])
    assert f"worker 1 of 2 done after 1 epochs (weights sha256 {weights_sha256(model)})" in outs[1][0]
    assert model.output_shape == (None, 14)
    timing = json.loads(written[1].read_text())
    assert timing["images_per_second"] > 0


def test_multi_worker_without_tf_config_is_one_line():
    from cxr.train import ClusterError, Worker, cluster_worker

    with pytest.raises(ClusterError, match="multi_worker needs TF_CONFIG"):
        cluster_worker({})
    with pytest.raises(ClusterError, match="task worker 2 not in the cluster"):
        cluster_worker({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}'})
    two = '{"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}'
    assert cluster_worker({"TF_CONFIG": two}) == Worker(index=0, workers=3, chief=False)


def test_frozen_epochs_on_stored_features_train_the_heads_weights_of_the_whole_model(small_dataset, tmp_path):
    """The features stage's backbone is train's (same seed): its stored output equals the trained model's
    backbone output; the head fitted on them scores val exactly as the whole model then does; unfreezing
    trains the full network from the head the features trained."""
    import keras
    from cxr.features import backbone_model, compute_features
    from cxr.train import build_network, set_determinism
    model_params = dataclasses.replace(PARAMS.model("mobilenet"), epochs=1, freeze_epochs=1)
    train_params = dataclasses.replace(PARAMS.train, batch_size=64)
    set_determinism(train_params.seed)
    made = compute_features(build_network(model_params, 32, 14, "mobilenet"), small_dataset.pixels,
                            tmp_path / "features.npy")
    features = np.load(tmp_path / "features.npy", mmap_mode="r")
    assert made["images"] == len(small_dataset.pixels) and features.shape == (made["images"], made["dims"]) == (557, 1024)
    frozen = train_model(small_dataset, model_params, train_params, 32, "mobilenet", verbose=0, features=features)
    val = small_dataset.splits["val"]
    images = np.asarray(small_dataset.images("val")[:], dtype=np.float32)
    np.testing.assert_allclose(backbone_model(frozen.model)(images, training=False), features[val.rows], atol=1e-5)
    np.testing.assert_allclose(predict(frozen.model, small_dataset.images("val")), frozen.val_predictions, atol=1e-6)

    class Unfrozen(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:   # the second epoch: the whole network, backbone trainable
                self.backbone = self.model.get_layer("backbone").get_weights()
    unfrozen = Unfrozen()
    two = train_model(small_dataset, dataclasses.replace(model_params, epochs=2), train_params, 32, "mobilenet",
                      verbose=0, features=features, callbacks=[unfrozen])
    assert len(two.history) == 2
    # Its backbone moved (the model returned may still be epoch 1's, when that one scored val best).
    initial = frozen.model.get_layer("backbone").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(initial, unfrozen.backbone))
