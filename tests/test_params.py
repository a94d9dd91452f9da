"""params.yaml: the real file parses; mistakes give one-line errors naming the key."""
import copy

import pytest
import yaml

from conftest import ROOT
from cxr.params import ParamsError, load_params, parse_params

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_project_params_parse():
    p = load_params(ROOT / "params.yaml")
    assert p.image.size >= 32 and p.resize.workers >= 1
    assert len(p.labels.targets) in (1, 14)


def _error(edit) -> str:
    raw = copy.deepcopy(RAW)
    edit(raw)
    with pytest.raises(ParamsError) as e:
        parse_params(raw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_wrong_type():
    assert _error(lambda r: r["image"].update(size="big")) == \
        "params.yaml: image.size: expected an integer in [32, 1024], got 'big'"


def test_unknown_key_suggests_the_close_one():
    assert _error(lambda r: r["split"].update(test_sise=0.2)) == \
        "params.yaml: split.test_sise: unknown key (did you mean 'test_size'?)"


def test_unknown_section_and_missing_section():
    assert "unknown section (did you mean 'labels'?)" in _error(lambda r: r.update(lables={}))
    assert _error(lambda r: r.pop("resize")) == "params.yaml: resize: missing section"


def test_missing_key_and_bad_choice():
    assert _error(lambda r: r["split"].pop("seed")) == "params.yaml: split.seed: missing, expected an integer in [0, 4294967295]"
    assert "data.source: expected one of 'sample', 'kaggle-sample', 'kaggle-full', got 'kagle'" in \
        _error(lambda r: r["data"].update(source="kagle"))


def test_out_of_range_and_bool_are_rejected():
    assert "split.test_size: expected a number in (0.0, 1.0)" in _error(lambda r: r["split"].update(test_size=1))
    assert "image.size: expected an integer" in _error(lambda r: r["image"].update(size=True))
    assert "labels.target" in _error(lambda r: r["labels"].update(target="Cardiomegally"))


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  source: [unclosed\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML at line"):
        load_params(path)


@pytest.mark.parametrize("section,key,value", [
    ("resize", "max_bad_fraction", float("nan")), ("split", "test_size", float("nan")),
    ("evaluate", "beta", float("inf")), ("resize", "max_bad_fraction", float("-inf")),
])
def test_nan_and_infinity_fail_every_range(section, key, value):
    assert f"{section}.{key}: expected a number in" in _error(lambda r: r[section].update({key: value}))


@pytest.mark.parametrize("section,key,value,expected", [
    ("image", "size", 200000, "an integer in [32, 1024]"),
    ("train", "batch_size", 10**9, "an integer in [1, 4096]"),
    ("evaluate", "bootstrap", 10**9, "an integer in [10, 100000]"),
    ("compute", "threads", 100000, "an integer in [1, 256]"),
    ("train", "steps_per_epoch", 0, "null (the whole train split) or an integer in [1, 100000]"),
])
def test_upper_bounds(section, key, value, expected):
    assert _error(lambda r: r[section].update({key: value})) == \
        f"params.yaml: {section}.{key}: expected {expected}, got {value}"


def _written(tmp_path, text: str) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_nan_written_in_yaml_is_refused(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("max_bad_fraction:", "max_bad_fraction: .nan #", 1)
    assert "resize.max_bad_fraction: expected a number in [0.0, 1.0], got nan" in _written(tmp_path, text)


def test_duplicate_key_is_refused_with_both_lines(tmp_path):
    text = (ROOT / "params.yaml").read_text() + "\ndata:\n  source: kaggle-full\n"
    first = 1 + (ROOT / "params.yaml").read_text().splitlines().index("data:")
    message = _written(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'params.yaml'}: not valid YAML at line ")
    assert f"key 'data' appears twice (first at line {first})" in message


def test_alias_bomb_is_refused_with_a_short_message(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    text = (ROOT / "params.yaml").read_text() + "\n".join(lines) + "\n"
    assert len("\n".join(lines)) < 4096
    message = _written(tmp_path, text)
    assert message.endswith("expands to more than 10000 values (YAML alias bomb?)") and len(message) < 200


def test_a_huge_wrong_value_is_shown_shortened():
    message = _error(lambda r: r["labels"].update(views=[["PA"] * 1000] * 1000))
    assert message.startswith("params.yaml: labels.views: expected a non-empty list") and len(message) < 300


def test_anchors_and_merge_keys_still_work(tmp_path):
    raw = copy.deepcopy(RAW)
    models = raw.pop("models")
    first = "cnn"
    block = yaml.safe_dump({"models": models}, sort_keys=False).replace(f"  {first}:\n", f"  {first}: &base\n", 1)
    text = yaml.safe_dump(raw, sort_keys=False) + block + "  copy:\n    <<: *base\n    epochs: 2\n"
    (tmp_path / "params.yaml").write_text(text)
    p = load_params(tmp_path / "params.yaml")
    assert p.model("copy").epochs == 2
    assert p.model("copy").family == p.model(first).family


def test_linear_variants_have_keys_of_their_own():
    from cxr.params import LinearParams
    assert isinstance(load_params(ROOT / "params.yaml").model("linear"), LinearParams)
    assert _error(lambda r: r["models"]["linear"].update(epochs=3)) == \
        "params.yaml: models.linear.epochs: unknown key"
    assert _error(lambda r: r["models"]["linear"].pop("C")) == \
        "params.yaml: models.linear.C: missing, expected a number in (0.0, 1000000.0]"
    assert _error(lambda r: r["models"]["linear"].update(size=20)) == \
        "params.yaml: models.linear.size: expected a divisor of image.size (128), got 20"
    # a network entry still has the network keys
    assert _error(lambda r: r["models"]["cnn"].update(components=5)) == \
        "params.yaml: models.cnn.components: unknown key"


def test_a_family_too_large_for_the_image_size_is_refused():
    def inception(r):
        r["models"]["cnn"]["family"] = "inception_v3"
        r["image"]["size"] = 64
    assert _error(inception) == "params.yaml: models.cnn.family: inception_v3 needs image.size >= 75, got 64"


def test_head_and_sampling_keys_and_their_errors():
    p = load_params(ROOT / "params.yaml")
    assert p.models["cnn"].head.units == (128,) and p.models["resnet50"].head.units == ()
    assert p.train.sampling in ("none", "undersample")
    assert _error(lambda r: r["models"]["cnn"]["head"].update(units=[512, 0])) == (
        "params.yaml: models.cnn.head.units: expected a list of at most 8 layer widths, each an integer in "
        "[1, 65536] ([] for none), got [512, 0]")
    assert _error(lambda r: r["models"]["cnn"].update(dropout=0.5)).startswith(
        "params.yaml: models.cnn.dropout: unknown key")
    assert _error(lambda r: r["train"].update(sampling="oversample")) == (
        "params.yaml: train.sampling: expected one of 'none', 'undersample', got 'oversample'")


def test_a_backbone_may_stay_frozen_for_every_epoch_but_not_longer():
    def frozen(epochs):
        raw = copy.deepcopy(RAW)
        raw["models"]["resnet50"].update(epochs=3, freeze_epochs=epochs)
        return parse_params(raw).models["resnet50"].freeze_epochs
    assert frozen(3) == 3
    assert _error(lambda r: r["models"]["resnet50"].update(epochs=3, freeze_epochs=4)) == (
        "params.yaml: models.resnet50.freeze_epochs: expected at most epochs (3; equal: the backbone stays "
        "frozen), got 4")


def test_multiclass_classes_and_their_decision():
    def parsed(**labels):
        raw = copy.deepcopy(RAW)
        raw["labels"].update(task="multiclass", **labels)
        return parse_params(raw).labels
    three = parsed(classes=["No Finding", "Infiltration", "Effusion"], target="abnormal")
    assert three.targets == ("No Finding", "Infiltration", "Effusion") and three.exclusive
    assert (three.decision.positive, three.decision.columns, three.decision.exclusive) == ("abnormal", (1, 2), True)
    assert parsed(classes=["Effusion", "Mass"], target="Mass").decision.columns == (1,)
    assert _error(lambda r: r["labels"].update(task="multiclass", classes=["Effusion", "Mass"])) == (
        "params.yaml: labels.target: abnormal needs 'No Finding' among labels.classes ['Effusion', 'Mass'], "
        "or name one of the classes")
    assert _error(lambda r: r["labels"].update(task="multiclass", classes=["Effusion", "Mass"],
                                               target="Hernia")) == (
        "params.yaml: labels.target: expected 'abnormal' or one of labels.classes ['Effusion', 'Mass'], "
        "got 'Hernia'")
    assert _error(lambda r: r["labels"].update(classes=["Effusion", "Effusion"])).startswith(
        "params.yaml: labels.classes: expected a list of at least 2 distinct classes from 'No Finding', ")
    assert _error(lambda r: r["labels"].update(classes=["Effusion", "Pneumothorax", "Normal"])).endswith(
        "got ['Effusion', 'Pneumothorax', 'Normal']")
