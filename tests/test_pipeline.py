"""The DVC pipeline end to end in a temporary copy of the project."""
import json

import pandas as pd
import yaml

from conftest import run


def _stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_data_stages_end_to_end(project):
    out = run(["dvc", "repro", "resize", "split"], project).stdout
    assert {"download", "relabel", "split", "resize"} <= set(_stages_run(out))

    splits = pd.read_csv(project / "data" / "splits.csv")
    assert len(splits) == 557
    assert splits.groupby("Patient ID")["split"].nunique().max() == 1
    summary = json.loads((project / "metrics" / "split.json").read_text())
    assert summary["patient_overlap"] == 0
    assert json.loads((project / "metrics" / "resize.json").read_text())["cached"] == 557

    again = run(["dvc", "repro", "resize", "split"], project).stdout
    assert _stages_run(again) == [] and "up to date" in again

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["split"]["seed"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _stages_run(run(["dvc", "repro", "resize", "split"], project).stdout) == ["split"]


def test_bad_param_stops_stage_with_one_line(project):
    text = (project / "params.yaml").read_text().replace("size: 128", "size: big")
    (project / "params.yaml").write_text(text)
    proc = run(["python", "stages/resize.py"], project, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "resize: params.yaml: image.size: expected an integer >= 32, got 'big'"
