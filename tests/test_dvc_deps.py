"""dvc.yaml names all the library code each stage runs, so a code change reruns that stage."""
import ast
from pathlib import Path

import yaml

from conftest import ROOT

SRC = ROOT / "src"


def _module_file(name: str) -> Path | None:
    path = SRC.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """``cxr`` modules a file imports anywhere (top level or inside functions)."""
    package = ".".join(path.relative_to(SRC).parent.parts) if path.is_relative_to(SRC) else ""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "cxr"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] == "cxr":
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}  # `from cxr import compute`
    return found


def library_files(script: Path) -> set[Path]:
    """Every file under src/ that running ``script`` may execute: its imports, theirs, and
    the ``__init__`` of each package on the way."""
    files, todo, seen = set(), list(_imported_modules(script)), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for module in [".".join(parts[:i]) for i in range(1, len(parts))] + [name]:
            path = _module_file(module)
            if path and path not in files:
                files.add(path)
                todo += _imported_modules(path)
    return files


def _only_reexports(path: Path) -> bool:
    """A package face (docstring, imports, ``__all__``): it runs nothing of its own, and
    what it imports is followed anyway."""
    def plain(node):
        return (isinstance(node, (ast.Import, ast.ImportFrom))
                or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
                or (isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id in ("__all__", "__version__")
                                                         for t in node.targets)))
    return all(plain(node) for node in ast.parse(path.read_text()).body)


def _stages():
    """``(name, script, deps)`` for every stage of dvc.yaml (a foreach counted once)."""
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        yield name, next(w for w in body["cmd"].split() if w.endswith(".py")), [str(d) for d in body["deps"]]


def test_every_stage_lists_the_library_files_it_runs():
    missing = []
    for name, script, deps in _stages():
        assert script in deps, f"{name}: its own script {script} is not a dep"
        for path in sorted(library_files(ROOT / script)):
            rel = str(path.relative_to(ROOT))
            if not _only_reexports(path) and not any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps):
                missing.append(f"{name}: {rel}")
    assert missing == [], "dvc.yaml deps miss code the stage runs: " + "; ".join(missing)


def test_no_stage_depends_on_library_code_it_never_runs():
    extra = []
    for name, script, deps in _stages():
        runs = {str(p.relative_to(ROOT)) for p in library_files(ROOT / script)}
        for dep in deps:
            if dep.startswith("src/") and not any(r == dep or r.startswith(dep.rstrip("/") + "/") for r in runs):
                extra.append(f"{name}: {dep}")
    assert extra == [], "dvc.yaml deps name code the stage never runs (a change there reruns it for nothing): " \
        + "; ".join(extra)


def test_the_import_walk_follows_packages_and_function_level_imports():
    files = {str(p.relative_to(SRC)) for p in library_files(ROOT / "stages" / "train.py")}
    assert {"cxr/train.py", "cxr/evaluate.py", "cxr/compute.py", "cxr/data/__init__.py",
            "cxr/models/cnn.py", "cxr/data/dataset.py"} <= files  # cnn.py: a lazy import in the registry
    assert "cxr/serve.py" not in files and "cxr/export.py" not in files
