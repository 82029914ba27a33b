"""A throwaway `mlflow server` for the tests that track against a real one (test_mlflow.py, test_flows.py)."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.helpers import env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """End a process this test started, and its children (its own session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def mlflow_env() -> dict:
    e = env()
    e.update(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return e


class Server:
    """`mlflow server` with a SQLite backend and proxied artifacts in a folder, on a free port."""

    def __init__(self, root: Path, backend_store_uri: str | None = None):
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend_store_uri = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"

    def __enter__(self) -> "Server":
        """Started; stopped when the block ends, or at once when it does not come up."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", self.backend_store_uri,
               "--artifacts-destination", str(self.root / "artifacts")]
        log = self.root / "server.log"
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=mlflow_env(), stdout=open(log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.uri}/health", self.proc, log)  # mlflow server migrates the schema before it answers

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def clone(self, root: Path) -> "Server":
        """A second server (not started) on a copy of this one's runs, registry and artifacts."""
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.root / "mlflow.db", root / "mlflow.db")
        if (self.root / "artifacts").is_dir():
            shutil.copytree(self.root / "artifacts", root / "artifacts")
        return Server(root)
