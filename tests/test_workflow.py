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
    assert called == {"repro", "test", "pr-report"} and called <= targets
    assert any("gh pr comment" in r and "reports/pr.md" in r for r in runs)
    assert "reports/pr.md" in (ROOT / "Makefile").read_text()
