"""The model bundle: the exported files plus one ``manifest.json`` that says how to use them.

Export writes ``models/<variant>/export/``: the Keras model, the TFLite and
Core ML files, and the manifest (variant, family, input and preprocessing,
targets and task, the decision and its threshold per format, each file's
sha256, and where the model came from). ``cxr predict`` and ``cxr serve``
read only a bundle, so a bundle copied anywhere works alone, and a file
changed after export is refused instead of silently mis-scored.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cxr.data.labels import Decision, decision_for
from cxr.errors import CxrError, first_line
from cxr.outputs import file_sha256

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 2   # 2: calibration, validation AUROC and flags
KERAS_FILE = "model.keras"
COREML_FILE = "model.mlpackage"
MODEL_CARD_FILE = "MODEL_CARD.md"


class BundleError(CxrError):
    """A bundle that is missing, incomplete or altered."""


def tflite_file(fmt: str) -> str:
    return f"model_{fmt}.tflite"


def file_hashes(directory: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under ``directory`` but the manifest, by relative POSIX path, sorted."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    return {p.relative_to(directory).as_posix(): file_sha256([p]) for p in files}


def preprocessing(size: int) -> dict:
    """What a consumer feeds the models: the same pixels training saw."""
    return {"size": size, "channels": 1, "layout": "NHWC", "dtype": "float32", "range": [0, 255],
            "description": (f"grayscale; the whole image resized to {size}x{size} (not cropped; aspect "
                            "not kept) by Pillow's Lanczos filter after a box reduction; 16-bit and DICOM "
                            "pixels stretched min..max to 0..255 (cxr.data.images); the model normalizes inside")}


def describe(variant: str, family: str, task: str, targets: list[str], size: int, decision: Decision,
             threshold_method: str, beta: float, formats: dict, source: dict, calibration: dict,
             evaluation: dict) -> dict:
    """The manifest's content (``write_manifest`` adds the version and the files' sha256).

    ``formats``: format -> its file and threshold; ``source``: where the model
    came from (data, split, commit); ``calibration``: the map folded into the outputs
    (``cxr.calibrate``); ``evaluation``: the variant's ``metrics/eval`` figures, whose flags
    and validation AUROC travel with the model (``cxr predict`` shows the flags, and picks
    its default by them). The decision is rebuilt from ``task``, its positive name and
    ``targets`` (``Bundle.decision_rule``).
    """
    d = evaluation[decision.positive]
    return {"variant": variant, "family": family, "task": task, "targets": list(targets),
            "input": preprocessing(size),
            "decision": {"positive": decision.positive, "negative": decision.negative,
                         "score": decision.describe(targets),
                         "rule": "positive when score >= threshold", "threshold_method": threshold_method,
                         "beta": beta, "threshold_source": "validation split, with each format's own outputs"},
            "calibration": {**calibration, "fitted_on": "validation split",
                            "note": "folded into the output layer: every format outputs calibrated probabilities"},
            "validation": {"decision_auroc": d["val"]["auroc"], "decision_auroc_ci95": d["val"]["auroc_ci95"]},
            "flags": evaluation["flags"], "formats": formats, "source": source}


@dataclass(frozen=True)
class Bundle:
    """A read manifest, with the folder it describes."""
    directory: Path
    manifest: dict

    @property
    def variant(self) -> str:
        return self.manifest["variant"]

    @property
    def targets(self) -> list[str]:
        return self.manifest["targets"]

    @property
    def size(self) -> int:
        return int(self.manifest["input"]["size"])

    @property
    def decision(self) -> dict:
        return self.manifest["decision"]

    @property
    def decision_rule(self) -> Decision:
        """How to compute the decision from the model's outputs."""
        return decision_for(self.manifest["task"], self.decision["positive"], self.targets)

    def format_of(self, filename: str) -> str:
        """The format key (``keras``, ``tflite_int8``, ...) whose file is ``filename``."""
        for fmt, entry in self.manifest["formats"].items():
            if entry["file"] == filename:
                return fmt
        raise BundleError(f"{self.directory / filename}: not a model of this bundle "
                          f"(its {MANIFEST_FILE} lists {', '.join(e['file'] for e in self.manifest['formats'].values())})")

    @property
    def flags(self) -> list[dict]:
        """Why this model's decisions should not be acted on (``cxr.evaluate.decision_flags``); [] if none."""
        return list(self.manifest["flags"])

    def threshold(self, fmt: str) -> float:
        return float(self.manifest["formats"][fmt]["threshold"])

    def verified(self, fmt: str) -> Path:
        """The path of ``fmt``'s file, after checking it against the manifest's sha256."""
        name = self.manifest["formats"][fmt]["file"]
        path = self.directory / name
        expected = {k: v for k, v in self.manifest["files"].items() if k == name or k.startswith(name + "/")}
        for rel, digest in expected.items():
            file = self.directory / rel
            if not file.is_file():
                raise BundleError(f"{file}: listed in {MANIFEST_FILE} but missing; restore the bundle "
                                  "with `dvc checkout` or `dvc repro`")
            if file_sha256([file]) != digest:
                raise BundleError(f"{file}: sha256 differs from {MANIFEST_FILE} (changed after export); "
                                  "restore it with `dvc checkout`, or re-export with `dvc repro`")
        return path


def read_bundle(path: str | os.PathLike) -> tuple[Bundle, str]:
    """The bundle at ``path`` and the format to use: a bundle folder (its Keras model),
    a variant folder holding ``export/``, or one model file inside a bundle."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such model file")
    if path.is_dir() and not (path / MANIFEST_FILE).is_file() and (path / "export" / MANIFEST_FILE).is_file():
        path = path / "export"
    directory, filename = (path, None) if path.is_dir() and (path / MANIFEST_FILE).is_file() else (path.parent, path.name)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not in a model bundle (no {MANIFEST_FILE} beside it); use the folder "
                          "the export stage writes, e.g. models/<variant>/export")
    try:
        manifest = json.loads(manifest_path.read_text())
        version = manifest["manifest_version"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{manifest_path}: not a model manifest ({first_line(e)})") from None
    if version != MANIFEST_VERSION:
        raise BundleError(f"{manifest_path}: manifest_version {version!r}, expected {MANIFEST_VERSION}; "
                          "re-export with this version of cxr")
    check_manifest(manifest, manifest_path)
    bundle = Bundle(directory, manifest)
    return bundle, "keras" if filename is None else bundle.format_of(filename)


TASKS = ("multilabel", "binary", "multiclass")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _confined(name: object) -> bool:
    """A relative POSIX path that stays inside the bundle."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def check_manifest(manifest: object, path: Path) -> None:
    """The manifest's schema, one line per problem (the first found): the keys ``cxr predict``
    and ``serve`` use, of the right types and ranges, finite numbers, targets that name a
    decision, every format's file listed and hashed, every path inside the bundle."""
    def fail(key: str, expected: str, got: object) -> None:
        raise BundleError(f"{path}: {key}: expected {expected}, got {json.dumps(got)[:60]}")

    def number(key: str, value: object, lo: float, hi: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo <= value <= hi:
            fail(key, f"a number in [{lo:g}, {hi:g}]", value)

    if not isinstance(manifest, dict):
        fail("manifest", "a JSON object", manifest)
    for key, kind in (("variant", str), ("family", str), ("task", str), ("targets", list), ("input", dict),
                      ("decision", dict), ("formats", dict), ("files", dict), ("flags", list), ("validation", dict)):
        if not isinstance(manifest.get(key), kind):
            fail(key, f"a {'JSON ' + kind.__name__.replace('str', 'string').replace('dict', 'object')}",
                 manifest.get(key))
    if manifest["task"] not in TASKS:
        fail("task", " or ".join(TASKS), manifest["task"])
    targets = manifest["targets"]
    if not targets or not all(isinstance(t, str) and t for t in targets) or len(set(targets)) != len(targets):
        fail("targets", "a non-empty list of distinct names", targets)
    size = manifest["input"].get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 1024:
        fail("input.size", "a whole number in [32, 1024]", size)
    positive = manifest["decision"].get("positive")
    if not isinstance(positive, str):
        fail("decision.positive", "a string", positive)
    task = manifest["task"]
    allowed = {"multilabel": ["abnormal"], "binary": targets[:1] if len(targets) == 1 else [],
               "multiclass": (["abnormal"] if "No Finding" in targets else []) + targets}[task]
    if positive not in allowed:
        fail("decision.positive", f"one of {allowed} for a {task} task with these targets", positive)
    files = manifest["files"]
    for name, digest in files.items():
        if not _confined(name):
            fail(f"files[{name!r}]", "a path inside the bundle", name)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            fail(f"files[{name!r}]", "a sha256 hex digest", digest)
    if "keras" not in manifest["formats"]:
        fail("formats", "an entry for the keras model", sorted(manifest["formats"]))
    for fmt, entry in manifest["formats"].items():
        if not isinstance(entry, dict):
            fail(f"formats.{fmt}", "a JSON object", entry)
        name = entry.get("file")
        if not _confined(name):
            fail(f"formats.{fmt}.file", "a path inside the bundle", name)
        if name not in files and not any(k.startswith(name + "/") for k in files):
            fail(f"formats.{fmt}.file", "a file listed (and hashed) in files", name)
        number(f"formats.{fmt}.threshold", entry.get("threshold"), 0.0, 1.0 + 1e-9)
    auroc = manifest["validation"].get("decision_auroc")
    if auroc is not None:
        number("validation.decision_auroc", auroc, 0.0, 1.0)
    for i, flag in enumerate(manifest["flags"]):
        if not isinstance(flag, dict) or not all(isinstance(flag.get(k), str) for k in ("flag", "split", "detail")):
            fail(f"flags[{i}]", "an object with flag, split and detail strings", flag)


def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    """``manifest`` plus the sha256 of every file now in ``directory``, as ``manifest.json``."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps({"manifest_version": MANIFEST_VERSION, **manifest,
                                "files": file_hashes(directory)}, indent=2) + "\n")
    return path
