"""Recipes: each earlier project's setup as a params override, run as a DVC experiment."""
import json

import pytest
import yaml

from conftest import ROOT, edit_params, run, tiny_params
from cxr.params import parse_params
from cxr.recipes import RecipeError, apply_recipe, load_recipe, recipe_names, recipe_overrides

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
RECIPES = {"capstone", "chexnet", "ios_app", "mobilenet_study", "triage"}


def test_every_recipe_gives_valid_params_and_keeps_what_it_does_not_name():
    assert set(recipe_names(ROOT)) == RECIPES
    for name in RECIPES:
        recipe = load_recipe(name, ROOT)
        merged = apply_recipe(PARAMS, recipe)
        parsed = parse_params(merged)
        assert list(parsed.models) == list(recipe["models"])       # the recipe's variants, and only those
        assert merged["split"] == PARAMS["split"] and merged["compute"] == PARAMS["compute"]
    capstone = parse_params(apply_recipe(PARAMS, load_recipe("capstone", ROOT)))
    resnet = capstone.models["resnet50"]
    assert resnet.freeze_epochs == resnet.epochs and resnet.head.units == (512, 512)
    assert capstone.train.optimizer == "rmsprop" and capstone.train.batch_size == PARAMS["train"]["batch_size"]
    ios = parse_params(apply_recipe(PARAMS, load_recipe("ios_app", ROOT)))
    assert ios.labels.decision == ("Infiltration", "no Infiltration") and ios.train.sampling == "undersample"


def test_overrides_remove_the_projects_variants_and_set_every_value_of_the_recipe():
    overrides = recipe_overrides(PARAMS, load_recipe("triage", ROOT))
    assert overrides[:len(PARAMS["models"])] == [f"~models.{v}" for v in PARAMS["models"]]
    assert "++labels.task='binary'" in overrides and "++models.resnet50.head.units=[]" in overrides
    assert "++models.resnet50.weights='imagenet'" in overrides and "++evaluate.beta=3" in overrides
    assert recipe_overrides(PARAMS, {"image": {"size": 64}}) == ["++image.size=64"]   # no models: kept


def test_a_bad_recipe_fails_before_dvc_runs_naming_the_recipe_and_key(tmp_path):
    with pytest.raises(RecipeError, match=r"^recipes/x.yaml: models.cnn.dropout: unknown key"):
        recipe_overrides(PARAMS, {"models": {"cnn": {**PARAMS["models"]["cnn"], "dropout": 0.5}}}, "recipes/x.yaml")
    with pytest.raises(RecipeError, match=r"^recipes/nope.yaml: no such recipe \(have: capstone, chexnet"):
        load_recipe("nope", ROOT)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "bad.yaml").write_text("- a list\n")
    with pytest.raises(RecipeError, match="bad.yaml: expected a mapping of params.yaml sections"):
        load_recipe("bad", tmp_path)


def _small(name: str) -> list[str]:
    """Overrides that make a recipe quick: 32 px, one epoch, random weights, one TFLite format."""
    out = ["image.size=32", "train.batch_size=64", "evaluate.bootstrap=20", "evaluate.heatmaps=1",
           "export.tflite=[fp32]", "export.coreml=false", "export.representative_images=8",
           "export.latency_images=2"]
    for variant, m in load_recipe(name, ROOT)["models"].items():
        out += [f"models.{variant}.epochs=1", f"models.{variant}.weights=null",
                f"models.{variant}.freeze_epochs={min(m['freeze_epochs'], 1)}"]
    return out


def test_every_recipe_runs_end_to_end_as_a_dvc_experiment(project):
    edit_params(project, tiny_params)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline"], project)
    for name in sorted(RECIPES):
        recipe = load_recipe(name, ROOT)
        run(["cxr", "recipe", name, *[a for s in _small(name) for a in ("--set", s)]], project)
        decision = parse_params(apply_recipe(PARAMS, recipe)).labels.decision[0]
        summary = (project / "reports" / "summary.md").read_text()
        for variant in recipe["models"]:
            evaluation = json.loads((project / "metrics" / "eval" / f"{variant}.json").read_text())
            assert evaluation["decision"] == decision and f"| {variant} |" in summary
            assert (project / "models" / variant / "export" / "model_fp32.tflite").is_file()
        if name == "ios_app":   # undersampled: as many Infiltration-negative as positive train images
            trained = json.loads((project / "metrics" / "train" / "cnn.json").read_text())["train_images"]
            split = json.loads((project / "metrics" / "split.json").read_text())["train"]
            assert trained == 2 * min(split["positives"]["Infiltration"], split["images"] - split["positives"]["Infiltration"])
        run(["git", "checkout", "params.yaml"], project)
    shown = run(["dvc", "exp", "show", "--json"], project).stdout
    assert all(f'"{name}"' in shown for name in RECIPES)
    proc = run(["cxr", "recipe", "triage", "--print"], project, check=False)
    assert proc.returncode == 0
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("seed: 42", "seed: 43"))
    proc = run(["cxr", "recipe", "triage"], project, check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "cxr recipe: params.yaml: differs from HEAD (an earlier recipe's changes?); commit it or run "
        "`git checkout params.yaml` first")
