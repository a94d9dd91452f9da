"""params.yaml parsed once into typed, validated objects.

Every key is required and has no default here: params.yaml is the single
knob surface, so a change to this parser can never silently change a value.
Errors are one line: ``params.yaml: train.epochs: expected an integer in [1, 1000],
got 'ten'``.
"""
from __future__ import annotations

from cxr.errors import CxrError

import dataclasses
import difflib
import math
import os
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from cxr.data.metadata import FINDINGS, NO_FINDING

# compute.max_cpu_isa -> oneDNN's ONEDNN_MAX_CPU_ISA; 'native' lets oneDNN pick the CPU's newest.
CPU_ISAS = {"native": "ALL", "avx2": "AVX2", "avx": "AVX", "sse41": "SSE41"}


class ParamsError(CxrError):
    """A params.yaml problem, already phrased as one line for the user."""


class _Invalid(Exception):
    def __init__(self, expected: str):
        self.expected = expected


# --- value checks: each returns the normalized value or raises _Invalid ---

def _choice(*options: str) -> Callable[[Any], str]:
    def check(v):
        if v not in options:
            raise _Invalid("one of " + ", ".join(repr(o) for o in options))
        return v
    return check


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _Invalid(f"an integer in [{lo}, {hi}]")
        return v
    return check


def _float(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"

    def check(v):
        # NaN fails no comparison, so finiteness is checked first.
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _Invalid(f"a number in {lb}{lo}, {hi}{rb}")
        v = float(v)
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            raise _Invalid(f"a number in {lb}{lo}, {hi}{rb}")
        return v
    return check


# Upper bounds: far past any sensible run, low enough that a typo fails here, not hours later.
_SEED = _int(0, 2**32 - 1)
_COUNT = _int(1, 100_000)
_EPOCHS = 1_000


def _workers(v):
    if v == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        return _int(1, 256)(v)
    except _Invalid as e:
        raise _Invalid(f"'auto' or {e.expected}") from None


def _steps(v):
    if v is None:
        return None
    try:
        return _COUNT(v)
    except _Invalid as e:
        raise _Invalid(f"null (the whole train split) or {e.expected}") from None


def _views(v):
    if not isinstance(v, list) or not v or any(x not in ("PA", "AP") for x in v):
        raise _Invalid("a non-empty list of 'PA' and/or 'AP'")
    return tuple(v)


def _target(v):
    options = ("abnormal",) + FINDINGS
    if v not in options:
        raise _Invalid("'abnormal' or a finding name (" + ", ".join(FINDINGS) + ")")
    return v


def _classes(v):
    options = (NO_FINDING,) + FINDINGS
    if not isinstance(v, list) or len(v) < 2 or len(set(v)) != len(v) or any(x not in options for x in v):
        raise _Invalid("a list of at least 2 distinct classes from " + ", ".join(repr(o) for o in options))
    return tuple(v)


def _bool(v):
    if not isinstance(v, bool):
        raise _Invalid("true or false")
    return v


def _weights(v):
    if v is None or v == "imagenet" or (isinstance(v, str) and v.endswith(".h5")):
        return v
    raise _Invalid("null, 'imagenet' or a path to a local .weights.h5 file")


def _units(v):
    def width(u):
        return isinstance(u, int) and not isinstance(u, bool) and 1 <= u <= 65_536
    if not isinstance(v, list) or len(v) > 8 or not all(width(u) for u in v):
        raise _Invalid("a list of at most 8 layer widths, each an integer in [1, 65536] ([] for none)")
    return tuple(v)


def _finetune_layers(v):
    return v if v == "all" else _int(1, 10_000)(v)


def _family(v):
    from cxr.models.registry import MODELS
    return _choice(*MODELS)(v)


def _min_size(family: str) -> int:
    from cxr.models.registry import MODELS
    return MODELS[family].min_size


def _threshold(v):
    if v in ("youden", "fbeta"):
        return v
    if isinstance(v, dict):
        if len(v) == 1 and next(iter(v)) in ("sensitivity", "specificity"):
            (metric, target), = v.items()
            try:
                return {metric: _float(0.0, 1.0, lo_open=True)(target)}
            except _Invalid:
                pass
        raise _Invalid("{sensitivity: x} or {specificity: x} with x in (0.0, 1.0]")
    try:
        return _float(0.0, 1.0)(v)
    except _Invalid:
        raise _Invalid("'youden', 'fbeta', {sensitivity: x}, {specificity: x} or a number in [0.0, 1.0]") from None


def _prevalence(v):
    if v == "nih":
        return v
    try:
        return _float(0.0, 1.0, lo_open=True, hi_open=True)(v)
    except _Invalid:
        raise _Invalid("'nih' (the decision's share of all NIH images) or a number in (0.0, 1.0)") from None


def _tflite_formats(v):
    formats = ("fp32", "fp16", "int8")
    if not isinstance(v, list) or any(x not in formats for x in v) or len(set(v)) != len(v):
        raise _Invalid("a list of distinct formats from 'fp32', 'fp16', 'int8'")
    return tuple(v)


def _check(fn: Callable[[Any], Any]):
    """A dataclass field validated by ``fn``; no default on purpose."""
    return field(metadata={"check": fn})


def _nested(cls):
    """A field holding a nested section."""
    return field(metadata={"section": cls})


# --- sections ---

@dataclass(frozen=True)
class DataParams:
    source: str = _check(_choice("sample", "kaggle-sample", "kaggle-full"))


@dataclass(frozen=True)
class LabelsParams:
    task: str = _check(_choice("multilabel", "binary", "multiclass"))
    target: str = _check(_target)
    classes: tuple = _check(_classes)
    views: tuple = _check(_views)

    @property
    def targets(self) -> tuple[str, ...]:
        """The label columns a model predicts, in output order."""
        return {"multilabel": FINDINGS, "binary": (self.target,), "multiclass": self.classes}[self.task]

    @property
    def exclusive(self) -> bool:
        """One class per image (a softmax), not independent yes/no outputs (sigmoids)."""
        return self.task == "multiclass"

    @property
    def decision(self):
        """The thresholded yes/no decision (``cxr.data.labels.Decision``), e.g. Infiltration / no Infiltration."""
        from cxr.data.labels import decision_for
        return decision_for(self.task, self.target, self.targets)


@dataclass(frozen=True)
class SplitParams:
    method: str = _check(_choice("patient", "official"))
    test_size: float = _check(_float(0.0, 1.0, lo_open=True, hi_open=True))
    val_size: float = _check(_float(0.0, 1.0, lo_open=True, hi_open=True))
    seed: int = _check(_SEED)


@dataclass(frozen=True)
class ImageParams:
    size: int = _check(_int(32, 1024))                  # pixels; NIH images are 1024 px


@dataclass(frozen=True)
class ResizeParams:
    workers: int = _check(_workers)
    max_bad_fraction: float = _check(_float(0.0, 1.0))


@dataclass(frozen=True)
class ComputeParams:
    threads: int = _check(_int(1, 256))               # TensorFlow intra-op (and TFLite) threads
    max_cpu_isa: str = _check(_choice(*CPU_ISAS))  # newest instruction set oneDNN kernels may use


@dataclass(frozen=True)
class AugmentParams:
    rotation: float = _check(_float(0.0, 180.0))         # degrees, either way
    shift: float = _check(_float(0.0, 0.5))              # share of width / height
    zoom: float = _check(_float(0.0, 0.9))               # share, in or out
    shear: float = _check(_float(0.0, 1.0))              # shear intensity
    horizontal_flip: bool = _check(_bool)                # chest anatomy is not symmetric

    @property
    def enabled(self) -> bool:
        return any((self.rotation, self.shift, self.zoom, self.shear, self.horizontal_flip))


@dataclass(frozen=True)
class TrainParams:
    seed: int = _check(_SEED)
    batch_size: int = _check(_int(1, 4096))
    optimizer: str = _check(_choice("adam", "rmsprop", "sgd"))
    class_weighting: str = _check(_choice("none", "balanced"))
    sampling: str = _check(_choice("none", "undersample"))   # undersample: as many decision negatives as positives
    early_stopping_patience: int = _check(_int(1, _EPOCHS))
    reduce_lr_patience: int = _check(_int(1, _EPOCHS))
    distribute: str = _check(_choice("none", "mirrored", "multi_worker"))
    steps_per_epoch: int | None = _check(_steps)   # batches per epoch; null: one pass over the train split
    mixed_precision: str = _check(_choice("none", "mixed_float16", "mixed_bfloat16"))  # Keras dtype policy
    feature_cache: bool = _check(_bool)   # frozen epochs fit the head on stored backbone features (cxr.features)
    calibration: str = _check(_choice("temperature", "platt", "none"))   # fitted on val, folded into the model
    augment: AugmentParams = _nested(AugmentParams)


@dataclass(frozen=True)
class HeadParams:
    """What sits on the features (a backbone's pooled output, the cnn's flattened maps): dense ReLU
    layers of ``units``, each followed by dropout (dropout alone if there are none), then the outputs."""
    units: tuple = _check(_units)
    dropout: float = _check(_float(0.0, 1.0, hi_open=True))


@dataclass(frozen=True)
class ModelParams:
    family: str = _check(_family)
    weights: str | None = _check(_weights)
    epochs: int = _check(_int(1, _EPOCHS))
    learning_rate: float = _check(_float(0.0, 1.0, lo_open=True))
    head: HeadParams = _nested(HeadParams)
    freeze_epochs: int = _check(_int(0, _EPOCHS))                 # epochs with the backbone frozen (all: = epochs)
    finetune_layers: int | str = _check(_finetune_layers)  # backbone layers unfrozen after: 'all' or a count
    finetune_learning_rate: float = _check(_float(0.0, 1.0, lo_open=True))


@dataclass(frozen=True)
class LinearParams:
    """A ``linear`` variant (cxr.models.linear): fitted by scikit-learn, no epochs or optimizer."""
    family: str = _check(_choice("linear"))
    size: int = _check(_int(1, 1024))               # thumbnail pixels per side; must divide image.size
    components: int = _check(_int(1, 100_000))      # principal components kept
    C: float = _check(_float(0.0, 1e6, lo_open=True))  # inverse L2 strength of each logistic regression


VariantParams = ModelParams | LinearParams


@dataclass(frozen=True)
class EvaluateParams:
    bootstrap: int = _check(_int(10, 100_000))           # patient-level bootstrap rounds for the 95% CIs
    seed: int = _check(_SEED)
    min_positives: int = _check(_COUNT)        # test positives a class needs to count in the mean AUROC
    threshold: str | float | dict = _check(_threshold)  # chosen on validation: youden | fbeta |
    #                                        {sensitivity: x} | {specificity: x} | a fixed number
    beta: float = _check(_float(0.0, 100.0, lo_open=True))  # F-beta's beta: > 1 weighs recall more
    heatmaps: int = _check(_int(0, 1_000))             # Grad-CAM overlays per variant
    prevalence: str | float = _check(_prevalence)      # where the model is used: PPV, NPV, counts per 1,000


@dataclass(frozen=True)
class ExportParams:
    tflite: tuple = _check(_tflite_formats)         # TFLite formats to write
    coreml: bool = _check(_bool)                    # also write a Core ML .mlpackage
    representative_images: int = _check(_COUNT)    # int8 calibration images, drawn from train
    seed: int = _check(_SEED)
    latency_images: int = _check(_COUNT)           # images timed one by one for ms/image


@dataclass(frozen=True)
class Params:
    data: DataParams
    labels: LabelsParams
    split: SplitParams
    image: ImageParams
    resize: ResizeParams
    compute: ComputeParams
    train: TrainParams
    models: dict[str, VariantParams]
    evaluate: EvaluateParams
    export: ExportParams

    def model(self, variant: str) -> VariantParams:
        if variant not in self.models:
            raise ParamsError(f"params.yaml: models.{variant}: no such variant "
                              f"(have: {', '.join(self.models)}){_did_you_mean(variant, self.models)}")
        return self.models[variant]


def _expected(check) -> str:
    """What a check accepts, in words (asked by failing it on a sentinel)."""
    try:
        check(object())
    except _Invalid as e:
        return e.expected
    raise AssertionError("a check accepted an arbitrary object")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 40, 40
MAX_VALUES = 10_000   # scalars + containers in the whole file, counted as expanded


def _show(value: Any) -> str:
    """A value as it goes in an error line: bounded, however large (or aliased) it is."""
    return _SHORT.repr(value)


def _check_size(raw: Any, file: str) -> None:
    """Refuse a document whose aliases expand it past ``MAX_VALUES`` (a 'billion laughs'),
    before anything walks or prints it."""
    count, stack = 0, [raw]
    while stack:
        value = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ParamsError(f"{file}: expands to more than {MAX_VALUES} values (YAML alias bomb?)")
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key written twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` entries are meant to be overridden
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.setdefault(key, line)
                except TypeError:
                    continue  # unhashable key: SafeLoader reports it
                if first != line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {_show(key)} appears twice (first at line {first})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _did_you_mean(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _parse_section(cls, raw: Any, where: str, file: str):
    if not isinstance(raw, dict):
        raise ParamsError(f"{file}: {where}: expected a mapping of keys, got {_show(raw)}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ParamsError(f"{file}: {where}.{key}: unknown key{_did_you_mean(str(key), known)}")
    values = {}
    for name, f in known.items():
        if "section" in f.metadata:
            if name not in raw:
                raise ParamsError(f"{file}: {where}.{name}: missing section")
            values[name] = _parse_section(f.metadata["section"], raw[name], f"{where}.{name}", file)
            continue
        check = f.metadata["check"]
        if name not in raw:
            raise ParamsError(f"{file}: {where}.{name}: missing, expected {_expected(check)}")
        try:
            values[name] = check(raw[name])
        except _Invalid as e:
            raise ParamsError(f"{file}: {where}.{name}: expected {e.expected}, got {_show(raw[name])}") from None
    return cls(**values)


def parse_params(raw: Any, file: str = "params.yaml") -> Params:
    """Validate a params mapping (as loaded from YAML) into ``Params``."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{file}: expected a mapping of sections, got {type(raw).__name__}")
    sections = typing.get_type_hints(Params)
    for key in raw:
        if key not in sections:
            raise ParamsError(f"{file}: {key}: unknown section{_did_you_mean(str(key), sections)}")
    parsed = {}
    for name in sections:
        if name not in raw:
            raise ParamsError(f"{file}: {name}: missing section")
        if name == "models":
            parsed[name] = _parse_models(raw[name], file)
        else:
            parsed[name] = _parse_section(sections[name], raw[name], name, file)
    _check_classes(parsed["labels"], file)
    size = parsed["image"].size
    for variant, m in parsed["models"].items():
        if isinstance(m, LinearParams) and size % m.size:
            raise ParamsError(f"{file}: models.{variant}.size: expected a divisor of image.size ({size}), "
                              f"got {m.size}")
        if isinstance(m, ModelParams) and size < (least := _min_size(m.family)):
            raise ParamsError(f"{file}: models.{variant}.family: {m.family} needs image.size >= {least}, "
                              f"got {size}")
    return Params(**parsed)


def _check_classes(labels: LabelsParams, file: str) -> None:
    """A multiclass decision needs its side among the classes: the target class, or for
    ``abnormal`` No Finding and at least one finding."""
    if labels.task != "multiclass":
        return
    if labels.target == "abnormal":
        if NO_FINDING not in labels.classes:
            raise ParamsError(f"{file}: labels.target: abnormal needs {NO_FINDING!r} among labels.classes "
                              f"{list(labels.classes)}, or name one of the classes")
    elif labels.target not in labels.classes:
        raise ParamsError(f"{file}: labels.target: expected 'abnormal' or one of labels.classes "
                          f"{list(labels.classes)}, got {labels.target!r}")


def _parse_models(raw: Any, file: str) -> dict[str, VariantParams]:
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{file}: models: expected a mapping of variant names to model settings, got {_show(raw)}")
    models = {}
    for variant, section in raw.items():
        if not isinstance(variant, str) or not variant.replace("_", "").isalnum():
            raise ParamsError(f"{file}: models.{variant}: variant names are letters, digits and _")
        # The family decides which keys the entry has: networks train, `linear` is fitted.
        family = section.get("family") if isinstance(section, dict) else None
        if family == "linear":
            models[variant] = _parse_section(LinearParams, section, f"models.{variant}", file)
            continue
        m = _parse_section(ModelParams, section, f"models.{variant}", file)
        if m.freeze_epochs > m.epochs:
            raise ParamsError(f"{file}: models.{variant}.freeze_epochs: expected at most epochs "
                              f"({m.epochs}; equal: the backbone stays frozen), got {m.freeze_epochs}")
        models[variant] = m
    return models


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate params.yaml; raises ParamsError with a one-line message."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the project root)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    _check_size(raw, str(path))
    return parse_params(raw, str(path))


def load_variant(argv: list[str] | None = None, description: str | None = None,
                 path: str | os.PathLike = "params.yaml") -> tuple[str, Params]:
    """For per-variant stages (``train.py cnn``): the variant named on the command
    line, checked against ``models``, and the validated params."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("variant", help="a key of models: in params.yaml")
    variant = parser.parse_args(argv).variant
    params = load_params(path)
    params.model(variant)
    return variant, params
