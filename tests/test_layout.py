"""The floor plan: one stage module per rule, stages independent, every module on the map,
artefacts read and written only by their format module, code formatted and lint-clean."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "workflow" / "bioaug"
STAGES = PACKAGE / "stages"


def rules() -> set[str]:
    names = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        names |= set(re.findall(r"^(?:rule|checkpoint) (\w+):", smk.read_text(), re.M))
    return names


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the bioaug modules `path` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO / "workflow").with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("bioaug")}


def test_one_stage_module_and_one_script_per_rule():
    stage_modules = {p.stem for p in STAGES.glob("*.py") if p.stem != "__init__"}
    scripts = {p.stem for p in (REPO / "workflow" / "scripts").glob("*.py")}
    assert stage_modules == rules() == scripts
    for name in stage_modules:
        tree = ast.parse((STAGES / f"{name}.py").read_text())
        assert "run" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, name


def test_scripts_call_their_own_stage_only():
    for script in (REPO / "workflow" / "scripts").glob("*.py"):
        stages = {m for m in imported_modules(script) if m.startswith("bioaug.stages.")}
        assert stages == {f"bioaug.stages.{script.stem}"}, script.name
        assert f"{script.stem}.run(" in script.read_text(), script.name


def test_a_stage_never_imports_another_stage():
    names = {p.stem for p in STAGES.glob("*.py")} - {"__init__"}
    for path in STAGES.glob("*.py"):
        others = {m for m in imported_modules(path) if m.startswith("bioaug.stages")} - {"bioaug.stages"}
        assert {m.split(".")[2] for m in others} & names <= {path.stem}, (path.name, others)


def test_every_module_is_on_its_package_map():
    """Each package's docstring names each of its modules (the map a newcomer reads)."""
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        children = [p.stem for p in init.parent.glob("*.py") if p.stem != "__init__"]
        children += [p.name for p in init.parent.iterdir() if (p / "__init__.py").exists()]
        missing = [c for c in children if not re.search(rf"\b{re.escape(c)}(\.py|/)?\b", doc)]
        assert not missing, f"{init.relative_to(REPO)} does not list {missing}"


# Each artefact's file names appear only in the module that owns it.
OWNERS = {
    "manifest.csv": {"formats/balanced.py"},
    ".norm.csv": {"formats/shards.py"},
    "generator.json": {"gan/sample.py"},
}


@pytest.mark.parametrize("name", sorted(OWNERS))
def test_artefact_files_have_one_owner(name):
    users = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if f'"{name}' in p.read_text() or f"'{name}" in p.read_text() or f"/{name}" in p.read_text()
    }
    assert users <= OWNERS[name], users


def tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists() and shutil.which(name) is None:
        pytest.fail(f"{name} is not installed: it is pinned in envs/requirements-cpu.txt")
    return str(path) if path.exists() else shutil.which(name)


def test_ruff_lint_and_format_are_clean():
    for args in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        proc = subprocess.run([tool("ruff"), *args], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, f"ruff {' '.join(args)}:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"


def test_snakefmt_is_clean():
    files = ["Snakefile", *map(str, sorted((REPO / "workflow" / "rules").glob("*.smk")))]
    proc = subprocess.run([tool("snakefmt"), "--check", *files], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
