"""Bottleneck features: computed once per backbone, weights, size and cache; errors name the file."""
import dataclasses
import json
import re

import pytest
import yaml

from conftest import ROOT, run
from cxr.features import FeatureCacheError, load_features, wanted
from cxr.params import parse_params

PARAMS = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))


def test_only_a_backbone_frozen_for_some_epochs_gets_features():
    resnet = PARAMS.model("resnet50")
    assert wanted(dataclasses.replace(resnet, freeze_epochs=1), True) is None
    assert wanted(dataclasses.replace(resnet, freeze_epochs=0), True) == \
        "freeze_epochs is 0 (the backbone trains from the first epoch)"
    assert wanted(dataclasses.replace(resnet, freeze_epochs=1), False) == "train.feature_cache is false"
    assert wanted(PARAMS.model("linear"), True) == "family linear has no backbone to freeze"
    assert wanted(dataclasses.replace(PARAMS.model("cnn"), freeze_epochs=1), True) == \
        "family cnn has no backbone to freeze"


def test_missing_or_foreign_features_are_one_line_errors(tmp_path):
    with pytest.raises(FeatureCacheError, match=r"features.npy: missing; run the features stage \(dvc repro\)$"):
        load_features(tmp_path, {"family": "resnet50"})
    (tmp_path / "features.npy").write_bytes(b"")
    (tmp_path / "key.json").write_text(json.dumps({"used": True, "key": {"family": "mobilenet", "size": 128}}))
    with pytest.raises(FeatureCacheError, match=r"key.json: features computed for other family, size; rerun"):
        load_features(tmp_path, {"family": "resnet50", "size": 224})


def _lock_out(project, stage: str) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return lock["stages"][stage]["outs"][0]["md5"]


def test_features_are_computed_once_and_kept_when_only_training_changes(tiny_copy):
    project = tiny_copy
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"]["mobilenet"].update(epochs=1, freeze_epochs=1)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro", "train@mobilenet"], project).stdout
    assert re.search(r"features@mobilenet: 557 images x 1024 features of mobilenet in", out), out
    key = json.loads((project / "data" / "features" / "mobilenet" / "key.json").read_text())
    assert key["used"] and key["key"]["family"] == "mobilenet" and key["key"]["size"] == 32
    assert json.loads((project / "data" / "features" / "cnn" / "key.json").read_text()) == {
        "used": False, "why": "family cnn has no backbone to freeze"}
    computed = _lock_out(project, "features@mobilenet")
    history = json.loads((project / "metrics" / "train" / "mobilenet.json").read_text())
    assert history["epochs_run"] == 1
    params["models"]["mobilenet"]["learning_rate"] = 0.0005   # reruns the stage (it reads the whole section)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro", "features@mobilenet"], project).stdout
    assert "features@mobilenet: kept (557 images x 1024 features of mobilenet" in out
    assert _lock_out(project, "features@mobilenet") == computed
    params["image"]["size"] = 64   # another size: other features (and another cache); a divisor of any linear variant's
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro", "features@mobilenet"], project).stdout
    assert "features@mobilenet: 557 images x 1024 features" in out and _lock_out(project, "features@mobilenet") != computed
