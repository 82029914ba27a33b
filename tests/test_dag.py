"""dvc.yaml tells the truth about code: every project module a stage's entry point imports is one of its deps.

A module missing from a stage's deps means a change to it leaves that stage's outputs marked up to
date while the code that made them has changed.
"""

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT, declared_stages

PACKAGES = {"ddpm": ROOT / "src" / "ddpm", "pipeline": ROOT / "pipeline"}  # the project's code; the rest is installed
STAGES = declared_stages(ROOT)


def module_file(name: str) -> Path | None:
    """The file of a project module ("ddpm.data" -> src/ddpm/data.py), None for anything else."""
    top, *rest = name.split(".")
    if top not in PACKAGES:
        return None
    base = PACKAGES[top].joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runs(node: ast.AST) -> bool:
    """False for `if TYPE_CHECKING:` blocks: their imports are for type checkers and never run."""
    return not (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions, with the packages above it."""
    found: set[str] = set()
    stack = [ast.parse(path.read_text(), filename=str(path))]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from ddpm import config`
        stack.extend(child for child in ast.iter_child_nodes(node) if _runs(child))
    return found | {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}


def code_reached(module: str) -> set[Path]:
    """The project files that `python -m MODULE` runs: the module, its packages, and what they import, transitively."""
    seen: set[Path] = set()
    todo = [module] + [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(imported_modules(path))
    return seen


def entry_module(cmd: str) -> str:
    match = re.fullmatch(r"python -m ([\w.]+)", cmd.strip())
    assert match, f"stage command {cmd!r} is not `python -m MODULE`: teach this test to read it"
    return match[1]


def test_the_walk_finds_lazy_imports_and_skips_type_checking_ones(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nimport ddpm.io\nif TYPE_CHECKING:\n    import ddpm.unet\n"
                      "def f():\n    from ddpm import data\n")
    assert imported_modules(source) >= {"ddpm", "ddpm.io", "ddpm.data"}
    assert "ddpm.unet" not in imported_modules(source)
    assert module_file("ddpm.data") == ROOT / "src/ddpm/data.py" and module_file("numpy") is None


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_runs_is_one_of_its_deps(stage):
    spec = STAGES[stage]
    deps = set(spec.get("deps", []))
    reached = {p.relative_to(ROOT).as_posix() for p in code_reached(entry_module(spec["cmd"]))}
    missing = sorted(reached - deps)
    assert not missing, f"dvc.yaml: stage {stage} runs {', '.join(missing)}, which its deps do not list: add them"
    gone = sorted(d for d in deps if d.endswith(".py") and not (ROOT / d).is_file())
    assert not gone, f"dvc.yaml: stage {stage} lists deps that do not exist: {', '.join(gone)}"


def declared_paths(spec: dict) -> set[str]:
    """The files and folders a stage declares it writes: outs, metrics and plots."""
    found = set()
    for key in ("outs", "metrics", "plots"):
        for entry in spec.get(key, []):
            found.update(entry if isinstance(entry, dict) else [entry])
    return found


def test_the_paths_the_stages_write_are_the_paths_dvc_yaml_declares():
    """pipeline/paths.py and dvc.yaml each name every output: they must name the same files."""
    from pipeline import paths

    declared = set().union(*(declared_paths(spec) for spec in STAGES.values()))
    named = {str(v) for v in vars(paths).values() if isinstance(v, Path)}
    assert declared <= named, f"dvc.yaml declares outputs pipeline/paths.py does not name: {sorted(declared - named)}"
    # the project's own files and folders, and what DVC leaves alone: run state, timings, the MLflow store
    not_outputs = {paths.PARAMS, paths.REPORTS, paths.METRICS, paths.FIGURES, paths.RESUME, paths.TIMING,
                   paths.MLFLOW_DB, paths.MLFLOW_ARTIFACTS}
    inside_an_out = {p for p in named if any(Path(d) in Path(p).parents for d in declared)}  # data/prepared/*.npz
    undeclared = named - declared - inside_an_out - {str(p) for p in not_outputs}
    assert not undeclared, f"pipeline/paths.py names outputs no stage declares: {sorted(undeclared)}"
