"""What a pull-request comment shows: params and metrics diffs against a base revision."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cxr.errors import CxrError

PLOT_SUFFIXES = (".csv", ".png")
PLOT_DIRS = ("reports/", "metrics/train/")


class CompareError(CxrError):
    """The comparison cannot be made."""


def _dvc(args: list[str], cwd: Path) -> str:
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    proc = subprocess.run([dvc, *args], cwd=cwd, capture_output=True, text=True)
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


def pr_report(base: str = "main", cwd: str | os.PathLike = ".", plots_html: str | None = None) -> str:
    """Markdown: params diff, metrics diff and changed plots of the work tree against ``base``."""
    cwd = Path(cwd)
    params = _dvc(["params", "diff", base, "--md"], cwd)
    metrics = _dvc(["metrics", "diff", base, "--md", "--precision", "4"], cwd)
    plots = changed_plots(base, cwd)
    lines = [f"## cxr-pipeline: changes against `{base}`", "", "### Params", "",
             params or "No params changed.", "", "### Metrics", "", metrics or "No metrics changed.", "",
             "### Plots", ""]
    if plots:
        lines += [f"- `{p}`" for p in plots]
        if plots_html:
            _dvc(["plots", "diff", base, "--out", plots_html], cwd)
            lines += ["", f"Side by side: `{plots_html}/index.html` (`dvc plots diff {base}`)."]
    else:
        lines.append("No plots changed.")
    return "\n".join(lines) + "\n"
