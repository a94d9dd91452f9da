"""Recipes: each earlier project's setup as a params override, run as a DVC experiment."""
import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import BUNDLED, ROOT, edit_params, predict_in_process, run, run_queued_experiments, tiny_params
from cxr.params import parse_params
from cxr.recipes import (SWEEP, SWEEP_VARIANT, RecipeError, apply_recipe, load_recipe, recipe_names, recipe_overrides,
                         sweep_recipes)

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
RECIPES = {"capstone", "chexnet", "ios_app", "mobilenet_study", "triage", "web_app"}


def test_every_recipe_gives_valid_params_and_keeps_what_it_does_not_name():
    assert set(recipe_names(ROOT)) == RECIPES | {SWEEP}
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
    assert (ios.labels.decision.positive, ios.labels.decision.negative) == ("Infiltration", "no Infiltration")
    assert ios.train.sampling == "undersample"
    web = parse_params(apply_recipe(PARAMS, load_recipe("web_app", ROOT)))
    assert web.labels.task == "multiclass" and len(web.labels.targets) == 3 and web.labels.decision.exclusive
    assert list(web.models) == ["densenet169"]


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
    """Overrides that make a queued recipe quick up to train: 32 px, one epoch of one batch, random weights.
    Every backbone stays frozen for that epoch, which then runs on stored features: the first training
    step through a whole DenseNet-121 alone took 96 s here (the tiny project's mobilenet trains all of a
    backbone's layers)."""
    out = ["image.size=32", "train.batch_size=64", "train.steps_per_epoch=1"]
    for variant in load_recipe(name, ROOT)["models"]:
        out += [f"models.{variant}.epochs=1", f"models.{variant}.weights=null", f"models.{variant}.freeze_epochs=1"]
    return out


def _experiments(project, sort_by: str | None = None) -> dict[str, dict]:
    """``dvc exp show``: each experiment's metrics files by name."""
    shown = json.loads(run(["dvc", "exp", "show", "--json", *(["--sort-by", sort_by] if sort_by else [])],
                           project).stdout)
    return {rev["name"]: {path: m["data"] for path, m in rev["data"]["metrics"].items() if "data" in m}
            for baseline in shown for exp in baseline.get("experiments") or [] for rev in exp["revs"]}


def test_the_sweep_has_one_recipe_per_network_family_that_fits_the_image_size():
    from cxr.models import MODELS
    recipes, too_small = sweep_recipes(load_recipe(SWEEP, ROOT), 64)
    assert too_small == ["inception_v3", "xception"]   # they need 75 and 71 px
    assert set(recipes) | set(too_small) | {"linear"} == set(MODELS)
    for family, recipe in recipes.items():
        parsed = parse_params(apply_recipe({**PARAMS, "image": {"size": 64}}, recipe))
        assert list(parsed.models) == [SWEEP_VARIANT] and parsed.models[SWEEP_VARIANT].family == family
    assert set(sweep_recipes(load_recipe(SWEEP, ROOT), 128)[0]) == set(MODELS) - {"linear"}
    with pytest.raises(RecipeError, match="sweep.yaml: expected models with one variant, 'candidate'"):
        sweep_recipes({"models": {"a": {}, "b": {}}}, 64)


def test_the_other_recipes_run_queued_as_dvc_experiments(project):
    """Five recipes queued and run two at a time, as `dvc queue start -j 2` would, through train: relabel
    with the recipe's targets, its networks fitted. Evaluate, export and report do not depend on the
    recipe: ios_app runs them in the workspace below, and the tiny project's multiclass task at length."""
    edit_params(project, tiny_params)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline"], project)
    run(["dvc", "repro", "resize", "split"], project)   # as a user's project holds them: experiments restore
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "data"], project)
    queued = RECIPES - {"ios_app"}
    for name in sorted(queued):
        run(["cxr", "recipe", name, "--queue", "--stage", "train", *[a for s in _small(name) for a in ("--set", s)]],
            project)
    run_queued_experiments(project, jobs=2)
    experiments = _experiments(project)
    assert set(experiments) == queued
    for name, metrics in experiments.items():
        recipe = load_recipe(name, ROOT)
        labels = parse_params(apply_recipe(PARAMS, recipe)).labels
        relabel = metrics["metrics/labels.json"]
        assert relabel["task"] == labels.task and set(relabel["targets"]) == set(labels.targets)
        for variant in recipe["models"]:   # trained on them, and scored on the recipe's decision
            trained = metrics[f"metrics/train/{variant}.json"]
            assert trained["epochs_run"] == 1 and 0 <= trained["val_decision_auroc"] <= 1


def test_the_ios_app_recipe_in_the_workspace_is_a_binary_task_named_everywhere(tiny_copy):
    """`make recipe NAME=ios_app` on the tiny project, every stage: labels.task binary with the target
    Infiltration, undersampled, cnn alone. Metrics, plots, report, bundle, the Core ML classifier and
    `cxr predict` name the target; the next recipe refuses to start on its params."""
    import pandas as pd
    from cxr.export import coreml_spec_summary
    project = tiny_copy
    run(["cxr", "recipe", "ios_app", "--set", "models.cnn.epochs=1"], project)
    assert set(_experiments(project)) == {"ios_app"}
    trained = json.loads((project / "metrics" / "train" / "cnn.json").read_text())["train_images"]
    split = json.loads((project / "metrics" / "split.json").read_text())["train"]
    infiltration = split["positives"]["Infiltration"]   # undersampled: as many negatives as positives
    assert trained == 2 * min(infiltration, split["images"] - infiltration)
    evaluation = json.loads((project / "metrics" / "eval" / "cnn.json").read_text())
    assert evaluation["decision"] == "Infiltration" and "abnormal" not in evaluation
    assert list(evaluation["per_class"]) == ["Infiltration"]
    assert evaluation["Infiltration"]["baselines"]["always_positive"]["sensitivity"] == 1.0
    confusion = pd.read_csv(project / "reports" / "cnn" / "plots" / "confusion.csv")
    assert set(confusion["actual"]) == {"Infiltration", "no Infiltration"}
    summary = (project / "reports" / "summary.md").read_text()
    assert "## Infiltration vs no Infiltration" in summary and re.search(r"\| (\*\*)?cnn( \(flagged\)\*\*)? \|", summary)
    manifest = json.loads((project / "models" / "cnn" / "export" / "manifest.json").read_text())
    assert manifest["task"] == "binary" and manifest["targets"] == ["Infiltration"]
    assert manifest["decision"]["positive"] == "Infiltration" and manifest["decision"]["negative"] == "no Infiltration"
    spec = coreml_spec_summary(project / "models" / "cnn" / "export" / "model.mlpackage")
    assert spec["outputs"] == ["classLabel", "decision", "probabilities"]
    assert spec["class_labels"] == ["no Infiltration", "Infiltration"]
    assert spec["threshold"] == manifest["formats"]["coreml"]["threshold"]   # classLabel cuts where the CLI does
    good = str(sorted((BUNDLED / "images").glob("*.png"))[0])
    table = predict_in_process(project, good, "--model", "models/cnn").stdout
    assert re.search(r"Infiltration score \d\.\d{3}: (INFILTRATION|no Infiltration) \(threshold", table), table
    assert "abnormal" not in table
    result = json.loads(predict_in_process(project, good, "--json", "--model", "models/cnn").stdout)
    assert result["decision"] == "Infiltration" and result["Infiltration"] == (
        result["Infiltration_score"] >= result["threshold"]) and "abnormal" not in result
    from test_heatmaps import served_heatmap_is_the_rules_map   # the one output, a binary bundle
    served_heatmap_is_the_rules_map(project, Path(good))

    proc = run(["cxr", "recipe", "triage"], project, check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "cxr recipe: params.yaml: differs from HEAD (an earlier recipe's changes?); commit it or run "
        "`git checkout params.yaml` first")


def test_the_sweep_queues_one_experiment_per_family_and_dvc_exp_show_ranks_them(tiny_copy):
    project = tiny_copy
    out = run(["cxr", "sweep", "--families", "cnn,mobilenet", "--stage", "train",
               *[a for s in _small(SWEEP) for a in ("--set", s)]], project).stdout
    assert "queued 2 experiments (cnn, mobilenet)" in out
    assert "dvc exp show --sort-by metrics/train/candidate.json:val_decision_auroc" in out
    run_queued_experiments(project, jobs=2)
    metrics = f"metrics/train/{SWEEP_VARIANT}.json"
    scores = {name: m[metrics]["val_decision_auroc"]
              for name, m in _experiments(project, f"{metrics}:val_decision_auroc").items()}
    assert set(scores) == {"sweep-cnn", "sweep-mobilenet"} and all(0 <= a <= 1 for a in scores.values())
    proc = run(["cxr", "sweep", "--families", "cnn,inception_v3"], project, check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "cxr sweep: --families: 'inception_v3' is not a network family that fits image.size 32 (have: cnn, "
        "resnet50, mobilenet, mobilenet_v2, densenet121, densenet169, efficientnetb0, vgg16, nasnetmobile)")
