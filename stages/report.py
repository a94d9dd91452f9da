"""report: reports/summary.md across all variants in params.yaml."""
import dataclasses
import json
from pathlib import Path

from cxr.errors import CxrError, run_stage
from cxr.outputs import atomic_path
from cxr.params import load_params
from cxr.paths import REPORTS, SEED_STUDY, stage_metrics
from cxr.report import summary_markdown

OUT = f"{REPORTS}/summary.md"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        hint = "make seeds" if str(path) == SEED_STUDY else "dvc repro"
        raise CxrError(f"{path}: missing; make it first ({hint})") from None


def main() -> None:
    params = load_params()
    variants = list(params.models)
    split = _read(Path(stage_metrics("split")))
    labels = _read(Path(stage_metrics("labels")))
    exports = {v: _read(p) for v in variants if (p := Path(stage_metrics("export", v))).exists()}
    data = {"source": params.data.source, "images": labels["rows"], "patients": labels["patients"],
            "split": params.split.method, "test_images": split["test"]["images"], "size": params.image.size,
            "split_images": {name: split[name]["images"] for name in ("train", "val", "test")}}
    seeds = _read(Path(SEED_STUDY))   # measured by bench/seeds.py (make seeds), not by a stage
    # As YAML gives them (lists, not tuples), to compare with the params the seed study recorded.
    raw_models = {v: json.loads(json.dumps(dataclasses.asdict(m))) for v, m in params.models.items()}
    text = summary_markdown({v: _read(Path(stage_metrics("eval", v))) for v in variants},
                            {v: _read(Path(stage_metrics("train", v))) for v in variants}, exports, data,
                            seeds, raw_models)
    with atomic_path(OUT) as tmp:
        tmp.write_text(text)
    print(f"report: {OUT} ({len(variants)} variants)")


if __name__ == "__main__":
    run_stage(main, "report")
