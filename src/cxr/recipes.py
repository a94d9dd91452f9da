"""Recipes: an earlier project's setup as an override of params.yaml (``recipes/<name>.yaml``).

A recipe is a partial params.yaml. Its sections are merged key by key into
the project's params, except ``models``, which it replaces whole (a recipe
names its own variants). It runs as a DVC experiment: ``dvc exp run
--set-param`` with one Hydra override per value (``~models.<v>`` removes a
variant the recipe does not have), so ``dvc exp show`` lists its params.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from cxr.errors import CxrError
from cxr.params import parse_params
from cxr.paths import RECIPES


class RecipeError(CxrError):
    """A recipe that cannot be read or that gives invalid params."""


def recipe_names(root: str | os.PathLike = ".") -> list[str]:
    return sorted(p.stem for p in (Path(root) / RECIPES).glob("*.yaml"))


def load_recipe(name: str, root: str | os.PathLike = ".") -> dict:
    """The recipe's mapping, checked to be a partial params.yaml."""
    path = Path(root) / RECIPES / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(f"{RECIPES}/{name}.yaml: no such recipe (have: {', '.join(recipe_names(root))})")
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(recipe, dict) or not recipe:
        raise RecipeError(f"{path}: expected a mapping of params.yaml sections")
    return recipe


def apply_recipe(params: dict, recipe: dict) -> dict:
    """``params`` with ``recipe`` merged in (``models`` replaced whole)."""
    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in over.items()}}
        return copy.deepcopy(over)
    merged = merge(params, {k: v for k, v in recipe.items() if k != "models"})
    if "models" in recipe:
        merged["models"] = copy.deepcopy(recipe["models"])
    return merged


def _value(v: Any) -> str:
    """One value in Hydra's override grammar (what ``dvc exp run -S`` parses)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, str) and "'" not in v and "\\" not in v:
        return f"'{v}'"
    raise RecipeError(f"cannot pass {v!r} to dvc exp run --set-param")


def recipe_overrides(params: dict, recipe: dict, where: str = "recipe") -> list[str]:
    """The ``--set-param`` overrides that turn ``params`` into ``apply_recipe(params, recipe)``,
    validated first (a bad recipe fails here, naming ``where``, before DVC runs anything)."""
    merged = apply_recipe(params, recipe)
    try:
        parse_params(merged, where)
    except CxrError as e:
        raise RecipeError(str(e)) from None
    out = [f"~models.{v}" for v in params.get("models", {})] if "models" in recipe else []

    def leaves(node: Any, key: str):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                yield from leaves(v, f"{key}.{k}" if key else str(k))
        else:
            yield f"++{key}={_value(node)}"
    return out + list(leaves(recipe, ""))


SWEEP = "sweep"               # recipes/sweep.yaml: the settings every family of a sweep shares
SWEEP_VARIANT = "candidate"   # one name in every sweep experiment, so `dvc exp show --sort-by` ranks them


def sweep_recipes(template: dict, size: int) -> tuple[dict[str, dict], list[str]]:
    """One recipe per registered network family: ``template`` (the sweep recipe) with its
    ``candidate`` variant set to that family. Also the families left out because they need
    larger images than ``size``."""
    from cxr.models import MODELS
    entry = template.get("models", {}).get(SWEEP_VARIANT)
    if not isinstance(entry, dict) or len(template["models"]) != 1:
        raise RecipeError(f"{RECIPES}/{SWEEP}.yaml: expected models with one variant, {SWEEP_VARIANT!r}")
    recipes, too_small = {}, []
    for family, spec in MODELS.items():
        if spec.fitted:
            continue
        if spec.min_size > size:
            too_small.append(family)
            continue
        recipes[family] = {**template, "models": {SWEEP_VARIANT: {**entry, "family": family}}}
    return recipes, too_small
