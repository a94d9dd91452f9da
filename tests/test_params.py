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
        "params.yaml: image.size: expected an integer >= 32, got 'big'"


def test_unknown_key_suggests_the_close_one():
    assert _error(lambda r: r["split"].update(test_sise=0.2)) == \
        "params.yaml: split.test_sise: unknown key (did you mean 'test_size'?)"


def test_unknown_section_and_missing_section():
    assert "unknown section (did you mean 'labels'?)" in _error(lambda r: r.update(lables={}))
    assert _error(lambda r: r.pop("resize")) == "params.yaml: resize: missing section"


def test_missing_key_and_bad_choice():
    assert _error(lambda r: r["split"].pop("seed")) == "params.yaml: split.seed: missing, expected an integer >= 0"
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
