import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mlflow_server import Server

os.environ.setdefault("DDPM_PROGRESS", "0")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@dataclass
class TrackedDag:
    """A tiny-profile project whose DAG ran against `server`."""

    project: Path
    server: Server

    def run(self, cmd: list[str]):
        """A command in the project, tracked by the server (MLFLOW_TRACKING_URI)."""
        from tests.test_mlflow import tracked

        return tracked(cmd, self.project, self.server.uri)


@pytest.fixture(scope="session")
def tracked_dag(tmp_path_factory):
    """The tiny DAG run once against a real `mlflow server` on 127.0.0.1: its report, run and registry are
    what tests/test_report.py and tests/test_browser.py check."""
    from tests.test_flows import make_project

    with Server(tmp_path_factory.mktemp("mlflow-report")) as server:
        dag = TrackedDag(make_project(tmp_path_factory.mktemp("reported") / "p"), server)
        dag.run([sys.executable, "-m", "dvc", "repro"])
        yield dag
