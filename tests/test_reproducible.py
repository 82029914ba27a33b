"""The same code, parameters and seed give the same bytes for every DVC output, and a second
workspace on the same tracking server adds no MLflow run or model version.

Two copies of the tiny project run the whole DAG against one MLflow backend, as two machines of a
team would. Every output in dvc.lock must have the same MD5 in both, except the report's: it
records where and when it was made (git commit, wall time per stage). Wall clock lives in
reports/timing/, which is not a DVC output."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import copy_project, env, use_profile

pytestmark = pytest.mark.slow
PROVENANCE = {"reports/report.md", "reports/report.html"}


def workspace(root: Path, name: str) -> Path:
    project = copy_project(root / name)
    use_profile(project, "tiny")
    return project


def repro(project: Path, tracking_uri: str) -> None:
    e = env()
    e["MLFLOW_TRACKING_URI"] = tracking_uri
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=e, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def output_hashes(project: Path) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def test_two_workspaces_make_the_same_bytes_and_one_model_version(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"
    first, second = workspace(tmp_path, "first"), workspace(tmp_path, "second")
    for project in (first, second):
        for git in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
            subprocess.run(git, cwd=project, check=True, capture_output=True)
        repro(project, uri)
    a, b = output_hashes(first), output_hashes(second)
    assert set(a) == set(b) and len(a) >= 15
    differ = sorted(path for path in a if a[path] != b[path])
    assert set(differ) <= PROVENANCE, f"outputs whose bytes differ between two runs: {differ}"
    for path in ("models/checkpoint.pt", "models/classifier.pt", "samples/samples.npz",
                 "reports/metrics/evaluate.json", "reports/metrics/train.json", "models/registered.json"):
        assert (first / path).read_bytes() == (second / path).read_bytes(), path

    client = MlflowClient(uri)
    versions = client.search_model_versions("name = 'ddpm-generator'")
    assert len(versions) == 1, [v.version for v in versions]
    runs = client.search_runs([client.get_experiment_by_name("ddpm").experiment_id])
    assert len(runs) == 1
