"""Shared by the tests that run stage entry points in a temporary copy of the project."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DVC_FILES = ("dvc.yaml", "registry/dvc.yaml")  # register has its own (dvc.yaml says why)


def declared_stages(project: Path) -> dict[str, dict]:
    """Every stage of the DAG by name, as its dvc.yaml declares it."""
    return {name: spec for f in DVC_FILES for name, spec in yaml.safe_load((project / f).read_text())["stages"].items()}


def locked_stages(project: Path) -> dict[str, dict]:
    """Every stage of the DAG by name, as DVC locked it (the dvc.lock beside each dvc.yaml)."""
    locks = [project / f.replace("dvc.yaml", "dvc.lock") for f in DVC_FILES]
    return {name: spec for lock in locks for name, spec in (yaml.safe_load(lock.read_text()) or {})["stages"].items()}


def ran(output: str) -> list[str]:
    """The stages `dvc repro` ran, by name, from its output ("Running stage 'registry/dvc.yaml:register'")."""
    return re.findall(r"Running stage '(?:[\w/.-]+:)?([\w-]+)'", output)


def project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return [f for f in out if (ROOT / f).is_file()]


def copy_project(dest: Path) -> Path:
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return dest


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e["PYTHONPATH"] = str(ROOT / "src")
    e["DDPM_PROGRESS"] = "0"
    e["DVC_NO_ANALYTICS"] = "1"
    e["MLFLOW_DISABLE_TELEMETRY"] = "true"
    e.pop("MLFLOW_TRACKING_URI", None)  # the project's own sqlite:///mlflow.db unless a test sets a server
    return e


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def use_profile(project: Path, name: str) -> None:
    run([sys.executable, "-m", "pipeline.profile", name], cwd=project)
