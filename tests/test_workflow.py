"""The pull-request workflow parses and calls only commands that exist here."""
import re

import yaml

from conftest import ROOT


def test_pr_workflow_parses_and_calls_existing_make_targets():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "pr.yml").read_text())
    assert True in workflow and "pull_request" in workflow[True]  # YAML reads the `on:` key as True
    steps = workflow["jobs"]["reproduce"]["steps"]
    runs = [s["run"] for s in steps if "run" in s]
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    called = {m.group(1) for r in runs for m in re.finditer(r"\bmake ([a-z-]+)", r)}
    assert called == {"install", "repro", "test", "pr-report"} and called <= targets
    assert any("gh pr comment" in r and "reports/pr.md" in r for r in runs)


def test_pr_workflow_restores_from_the_remote_or_the_actions_cache_before_reproducing():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "pr.yml").read_text())
    steps = workflow["jobs"]["reproduce"]["steps"]
    names = [s.get("name", s.get("uses", "")) for s in steps]
    at = {name: i for i, name in enumerate(names)}
    pull = next(s for s in steps if "dvc pull --run-cache" in s.get("run", ""))
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache"))
    push = next(s for s in steps if "dvc push --run-cache" in s.get("run", ""))
    repro = next(s for s in steps if s.get("run") == "make repro")
    assert pull["if"] == push["if"] == "env.DVC_REMOTE_URL != ''" and cache["if"] == "env.DVC_REMOTE_URL == ''"
    assert cache["with"]["path"] == ".dvc/cache" and "hashFiles('dvc.lock')" in cache["with"]["key"]
    assert at[pull["name"]] < at[repro["name"]] < at[push["name"]] and at[cache["name"]] < at[repro["name"]]
    assert "DVC_REMOTE_URL" in workflow["env"]
    assert "reports/pr.md" in (ROOT / "Makefile").read_text()
