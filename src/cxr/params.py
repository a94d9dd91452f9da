"""params.yaml parsed once into typed, validated objects.

Every key is required and has no default here: params.yaml is the single
knob surface, so a change to this parser can never silently change a value.
Errors are one line: ``params.yaml: train.epochs: expected an integer >= 1,
got 'ten'``.
"""
from __future__ import annotations

from cxr.errors import CxrError

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from cxr.data.metadata import FINDINGS


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


def _int(lo: int | None = None) -> Callable[[Any], int]:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
            raise _Invalid("an integer" + (f" >= {lo}" if lo is not None else ""))
        return v
    return check


def _float(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"

    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Invalid(f"a number in {lb}{lo}, {hi}{rb}")
        v = float(v)
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            raise _Invalid(f"a number in {lb}{lo}, {hi}{rb}")
        return v
    return check


def _workers(v):
    if v == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return _int(1)(v)


def _views(v):
    if not isinstance(v, list) or not v or any(x not in ("PA", "AP") for x in v):
        raise _Invalid("a non-empty list of 'PA' and/or 'AP'")
    return tuple(v)


def _target(v):
    options = ("abnormal",) + FINDINGS
    if v not in options:
        raise _Invalid("'abnormal' or a finding name (" + ", ".join(FINDINGS) + ")")
    return v


def _check(fn: Callable[[Any], Any]):
    """A dataclass field validated by ``fn``; no default on purpose."""
    return field(metadata={"check": fn})


# --- sections ---

@dataclass(frozen=True)
class DataParams:
    source: str = _check(_choice("sample", "kaggle-sample", "kaggle-full"))


@dataclass(frozen=True)
class LabelsParams:
    task: str = _check(_choice("multilabel", "binary"))
    target: str = _check(_target)
    views: tuple = _check(_views)

    @property
    def targets(self) -> tuple[str, ...]:
        """The label columns a model predicts, in output order."""
        return FINDINGS if self.task == "multilabel" else (self.target,)


@dataclass(frozen=True)
class SplitParams:
    method: str = _check(_choice("patient", "official"))
    test_size: float = _check(_float(0.0, 1.0, lo_open=True, hi_open=True))
    val_size: float = _check(_float(0.0, 1.0, lo_open=True, hi_open=True))
    seed: int = _check(_int(0))


@dataclass(frozen=True)
class ImageParams:
    size: int = _check(_int(32))


@dataclass(frozen=True)
class ResizeParams:
    workers: int = _check(_workers)
    max_bad_fraction: float = _check(_float(0.0, 1.0))


@dataclass(frozen=True)
class Params:
    data: DataParams
    labels: LabelsParams
    split: SplitParams
    image: ImageParams
    resize: ResizeParams


def _expected(check) -> str:
    """What a check accepts, in words (asked by failing it on a sentinel)."""
    try:
        check(object())
    except _Invalid as e:
        return e.expected
    raise AssertionError("a check accepted an arbitrary object")


def _did_you_mean(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _parse_section(cls, raw: Any, where: str, file: str):
    if not isinstance(raw, dict):
        raise ParamsError(f"{file}: {where}: expected a mapping of keys, got {raw!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ParamsError(f"{file}: {where}.{key}: unknown key{_did_you_mean(str(key), known)}")
    values = {}
    for name, f in known.items():
        check = f.metadata["check"]
        if name not in raw:
            raise ParamsError(f"{file}: {where}.{name}: missing, expected {_expected(check)}")
        try:
            values[name] = check(raw[name])
        except _Invalid as e:
            raise ParamsError(f"{file}: {where}.{name}: expected {e.expected}, got {raw[name]!r}") from None
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
        parsed[name] = _parse_section(sections[name], raw[name], name, file)
    return Params(**parsed)


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate params.yaml; raises ParamsError with a one-line message."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the project root)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    return parse_params(raw, str(path))
