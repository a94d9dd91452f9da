"""Comparing results with a base revision: the pull-request report and the reproduction check.

A changed quality metric is judged against the base's own 95% patient-level
bootstrap interval for it (``<name>_ci95`` next to the figure in the base's
metrics file): inside it, the change is *within noise*; outside, *changed*.
Figures without an interval (thresholds, losses, epochs, sizes) are listed
but not judged, as are figures only one side has; a flipped flag
(``collapsed``) always counts as changed.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cxr.errors import CxrError

PLOT_SUFFIXES = (".csv", ".png")
PLOT_DIRS = ("reports/", "metrics/train/")


class CompareError(CxrError):
    """The comparison cannot be made."""


def _dvc_path() -> str:
    return shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))


def _dvc(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([_dvc_path(), *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CompareError(f"dvc {' '.join(args)}: {reason}")
    return proc.stdout.strip()


def changed_plots(base: str, cwd: Path) -> list[str]:
    """Plot files (data and PNG) that differ between ``base`` and the work tree."""
    proc = subprocess.run(["git", "diff", "--name-only", base, "--", *PLOT_DIRS], cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompareError(f"git diff {base}: {proc.stderr.strip() or 'failed'}")
    return sorted(p for p in proc.stdout.split() if p.endswith(PLOT_SUFFIXES))


CI_SUFFIX = "_ci95"
CHANGED, WITHIN_NOISE, NOT_JUDGED = "changed", "within noise", "no interval"


@dataclass(frozen=True)
class MetricChange:
    file: str
    key: str
    old: object
    new: object
    band: tuple[float, float] | None  # the base's 95% interval for this figure

    @property
    def verdict(self) -> str:
        if self.old is None or self.new is None:  # a figure only one side has
            return NOT_JUDGED
        if isinstance(self.old, bool) or isinstance(self.new, bool):
            return CHANGED
        if self.band is None or not _is_number(self.new):
            return NOT_JUDGED
        low, high = self.band
        return WITHIN_NOISE if low <= self.new <= high else CHANGED


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _band(key: str, old: dict) -> tuple[float, float] | None:
    """The base's interval for ``key``: ``a.auroc`` -> ``a.auroc_ci95.{low,high}``, and
    ``tflite.fp16.auroc.Edema`` -> ``tflite.fp16.auroc_ci95.Edema.{low,high}``."""
    parts = key.split(".")
    for i in range(len(parts) - 1, -1, -1):
        name = ".".join(parts[:i] + [parts[i] + CI_SUFFIX] + parts[i + 1:])
        low, high = old.get(f"{name}.low"), old.get(f"{name}.high")
        if _is_number(low) and _is_number(high):
            return float(low), float(high)
    return None


def metric_changes(base: str, cwd: str | os.PathLike = ".") -> list[MetricChange]:
    """Every quality figure that differs between ``base`` and the work tree, with its band."""
    diff = json.loads(_dvc(["metrics", "diff", base, "--all", "--json"], Path(cwd)) or "{}")
    changes = []
    for file, figures in sorted(diff.items()):
        old = {k: v.get("old") for k, v in figures.items()}
        for key, v in sorted(figures.items()):
            if CI_SUFFIX in key or v.get("old") == v.get("new"):
                continue
            changes.append(MetricChange(file, key, v.get("old"), v.get("new"), _band(key, old)))
    return changes


def _fmt(v) -> str:
    if v is None:
        return "—"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def changes_markdown(changes: list[MetricChange]) -> str:
    if not changes:
        return "No metrics changed."
    order = {CHANGED: 0, WITHIN_NOISE: 1, NOT_JUDGED: 2}
    counts = {k: sum(c.verdict == k for c in changes) for k in order}
    lines = [f"**{counts[CHANGED]} changed** beyond the base's 95% interval, {counts[WITHIN_NOISE]} within noise, "
             f"{counts[NOT_JUDGED]} without an interval (not judged).", "",
             "| verdict | file | metric | base | new | Δ | base 95% interval |", "|---|---|---|---|---|---|---|"]
    for c in sorted(changes, key=lambda c: (order[c.verdict], c.file, c.key)):
        delta = _fmt(c.new - c.old) if _is_number(c.old) and _is_number(c.new) else ""
        band = f"{c.band[0]:.4f}–{c.band[1]:.4f}" if c.band else ""
        verdict = f"**{c.verdict}**" if c.verdict == CHANGED else c.verdict
        lines.append(f"| {verdict} | `{c.file}` | `{c.key}` | {_fmt(c.old)} | {_fmt(c.new)} | {delta} | {band} |")
    return "\n".join(lines)


def check_reproduction(base: str = "HEAD", cwd: str | os.PathLike = ".") -> tuple[list[str], str]:
    """One line per quality metric of the work tree outside the base's band, and a summary line."""
    changes = metric_changes(base, cwd)
    failures = [f"{c.file}: {c.key}: {_fmt(c.old)} -> {_fmt(c.new)}, outside {base}'s 95% interval "
                f"[{c.band[0]:.4f}, {c.band[1]:.4f}]" if c.band else
                f"{c.file}: {c.key}: {_fmt(c.old)} -> {_fmt(c.new)}"
                for c in changes if c.verdict == CHANGED]
    within = sum(c.verdict == WITHIN_NOISE for c in changes)
    unjudged = [c.key for c in changes if c.verdict == NOT_JUDGED]
    summary = (f"{len(failures)} quality metrics beyond their band, {within} moved within noise"
               + (f"; {len(unjudged)} figures without an interval moved" if unjudged else "")
               + f" (against {base})")
    return failures, summary


def fresh_reproduction(rev: str = "HEAD", cwd: str | os.PathLike = ".") -> Path:
    """Clone ``rev`` into a new temporary folder and run ``dvc repro`` there, from an empty
    DVC cache: every stage executes, as on a new machine. Returns the clone."""
    clone = Path(tempfile.mkdtemp(prefix="cxr-check-repro-")) / "project"
    for args in (["clone", "--quiet", str(Path(cwd).resolve()), str(clone)], ["-C", str(clone), "checkout", "-q", rev]):
        proc = subprocess.run(["git", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompareError(f"git {' '.join(args)}: {proc.stderr.strip() or 'failed'}")
    # The clone's own code, and the tools of the environment running this.
    env = {**os.environ, "PYTHONPATH": str(clone / "src"),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run([_dvc_path(), "repro"], cwd=clone, env=env)
    if proc.returncode != 0:
        raise CompareError(f"dvc repro in {clone} failed (exit {proc.returncode})")
    return clone


def pr_report(base: str = "main", cwd: str | os.PathLike = ".", plots_html: str | None = None) -> str:
    """Markdown: params diff, judged metric changes and changed plots of the work tree against ``base``."""
    cwd = Path(cwd)
    params = _dvc(["params", "diff", base, "--md"], cwd)
    metrics = changes_markdown(metric_changes(base, cwd))
    plots = changed_plots(base, cwd)
    lines = [f"## cxr-pipeline: changes against `{base}`", "", "### Params", "",
             params or "No params changed.", "", "### Metrics", "",
             "Each changed quality metric is judged against the base's own 95% patient-level bootstrap "
             "interval: *within noise* inside it, *changed* outside.", "", metrics, "",
             "### Plots", ""]
    if plots:
        lines += [f"- `{p}`" for p in plots]
        if plots_html:
            _dvc(["plots", "diff", base, "--out", plots_html], cwd)
            lines += ["", f"Side by side: `{plots_html}/index.html` (`dvc plots diff {base}`)."]
    else:
        lines.append("No plots changed.")
    return "\n".join(lines) + "\n"
