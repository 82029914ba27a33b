"""Scale-out on real engines, run here (issue 15): what docs/tracking.md, docs/dvc.md and docs/orchestration.md tell a team to do.

- MLflow with a PostgreSQL backend store: a throwaway PostgreSQL cluster (Debian's server binaries, on
  127.0.0.1), a real `mlflow server` on it, the tiny DAG tracked there; the registry is read back with SQL.
- A DVC remote: `dvc push` from one copy, a fresh `git clone` that `dvc pull`s (or `dvc repro --pull`s)
  and reproduces nothing, against the same tracking server, as a teammate would.
- Prefect: a deployment on a process work pool, picked up by a real `prefect worker start` (not `serve`).

Every server binds to 127.0.0.1 and is stopped by the test that started it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import copy_project, declared_stages, env, locked_stages, ran, run, use_profile
from tests.mlflow_server import Server, free_port, stop, wait_http
from tests.test_flows import FASTAPI_COMPAT, fastapi_rejects_min_items
from tests.test_mlflow import MODEL, sha256, tracked

pytestmark = pytest.mark.slow

POSTGRES_INSTALL = "apt-get install -y postgresql"


def make_project(dest: Path) -> Path:
    """A git copy of the project on the tiny profile (as tests/test_mlflow.py makes it: no DDPM sweep row)."""
    project = copy_project(dest)
    use_profile(project, "tiny")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sweep"]["ddpm"] = False  # its 50 steps are most of the tiny DAG's time on a busy machine
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], cwd=project)
    commit(project, "tiny")
    return project


def commit(project: Path, message: str) -> None:
    run(["git", "add", "-A"], cwd=project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], cwd=project)


def dvc(project: Path, *args: str, uri: str | None = None) -> subprocess.CompletedProcess:
    """`dvc ARGS` in the project, tracked by the MLflow server at `uri`."""
    return tracked([sys.executable, "-m", "dvc", *args], project, uri)


# ---------------------------------------------------------------------------- MLflow on PostgreSQL
def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (newest major version first), else initdb's on PATH."""
    def major(folder: Path) -> int:
        return int(folder.parent.name) if folder.parent.name.isdigit() else 0

    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True)
    if shutil.which("initdb"):
        folders.append(Path(shutil.which("initdb")).resolve().parent)
    return next((f for f in folders if all((f / b).is_file() for b in ("initdb", "pg_ctl", "postgres"))), None)


class Postgres:
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1 only (trust authentication for the
    superuser `mlflow`; no password). PostgreSQL refuses to run as root: as root, its processes run as `nobody`,
    in a folder of /tmp that `nobody` owns (pytest's tmp_path lies under a root-only folder)."""

    def __init__(self, bin_dir: Path):
        self.bin, self.port, self.user = bin_dir, free_port(), "mlflow"
        self.root = Path(tempfile.mkdtemp(prefix="ddpm-postgres-"))
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.started = False
        if os.geteuid() == 0:
            shutil.chown(self.root, "nobody")

    def _as_owner(self, *cmd: str) -> subprocess.CompletedProcess:
        if os.geteuid() == 0:
            cmd = ("runuser", "-u", "nobody", "--", *cmd)
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.is_file() else ""
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log}")
        return proc

    def start(self) -> None:
        self._as_owner(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                       "-E", "UTF8", "--locale=C", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                       "-w", "-t", "120", "start")
        self.started = True

    def uri(self, database: str) -> str:
        # the driver named: SQLAlchemy >= 2.1 reads a bare postgresql:// as psycopg (3), not psycopg2
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=database)

    def create_database(self, name: str) -> str:
        conn = self.connect()
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.uri(name)

    def query(self, database: str, sql: str, *args) -> list[tuple]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        finally:
            conn.close()

    def stop(self) -> None:
        try:
            if self.started:
                try:
                    self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60",
                                   "stop")
                except AssertionError:  # pg_ctl could not stop it: end the postmaster this test started, by its pid
                    pid_file = self.data / "postmaster.pid"
                    if pid_file.is_file():
                        os.kill(int(pid_file.read_text().split()[0]), 9)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture()
def postgres():
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL's server binaries (initdb, pg_ctl, postgres) are missing: {POSTGRES_INSTALL} "
                    "(.ci/run does)")
    cluster = Postgres(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def postgres_mlflow(postgres, tmp_path):
    # runs and registry in PostgreSQL, artifacts still in a folder (proxied)
    with Server(tmp_path / "mlflow", backend_store_uri=postgres.create_database("mlflow")) as server:
        yield server


def test_mlflow_server_on_postgresql_holds_runs_and_registry(postgres, postgres_mlflow, tmp_path):
    project = make_project(tmp_path / "p")
    out = dvc(project, "repro", uri=postgres_mlflow.uri).stdout
    assert {"register", "promote", "report"} <= set(ran(out))
    assert not (project / "mlflow.db").exists()  # nothing went to the local SQLite store
    registered = json.loads((project / "models/registered.json").read_text())
    decision = json.loads((project / "reports/metrics/registry.json").read_text())
    checkpoint = sha256(project / "models/checkpoint.pt")
    assert (registered["model"], registered["version"], registered["checkpoint_sha256"]) == (MODEL, "1", checkpoint)
    assert decision["decision"] == "promoted" and decision["tracking_uri"] == postgres_mlflow.uri

    # the registry, read from PostgreSQL's tables (not through MLflow)
    db = "mlflow"
    assert postgres.query(db, "SELECT version, status FROM model_versions WHERE name = %s", MODEL) == [(1, "READY")]
    aliases = dict(postgres.query(db, "SELECT alias, version FROM registered_model_aliases WHERE name = %s", MODEL))
    assert aliases == {"candidate": 1, "champion": 1}
    assert postgres.query(db, "SELECT value FROM model_version_tags WHERE name = %s AND version = 1 AND key = %s",
                          MODEL, "checkpoint_sha256") == [(checkpoint,)]
    [(run_id, status)] = postgres.query(
        db, "SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'ddpm.checkpoint_sha256' AND t.value = %s", checkpoint)
    assert run_id == registered["source_run_id"] == decision["run_id"] and status == "FINISHED"
    gate = dict(postgres.query(db, "SELECT key, value FROM tags WHERE run_uuid = %s AND key LIKE 'ddpm.gate%%'",
                               run_id))
    assert gate["ddpm.gate.decision"] == "promoted"
    logged = {k for (k,) in postgres.query(db, "SELECT key FROM metrics WHERE run_uuid = %s", run_id)}
    assert {"loss", "domain.fid", "domain.floor.fid"} <= logged

    # a second `dvc repro` finds the version in PostgreSQL: nothing re-registered, nothing re-run
    again = dvc(project, "repro", uri=postgres_mlflow.uri)
    assert ran(again.stdout) == ["register"]
    assert "already holds checkpoint sha256" in again.stdout + again.stderr
    assert postgres.query(db, "SELECT count(*) FROM model_versions WHERE name = %s", MODEL) == [(1,)]


# ---------------------------------------------------------------------------- a DVC remote shared by a team
@pytest.fixture()
def mlflow_server(tmp_path):
    """The team's tracking server, which both checkouts track into."""
    with Server(tmp_path / "mlflow") as server:
        yield server


def outputs(project: Path) -> dict[str, str]:
    """SHA-256 of every file of every output dvc.lock records (what `dvc push` shares)."""
    declared, locked = declared_stages(project), locked_stages(project)
    paths = [project / out["path"] for name in declared for out in locked[name].get("outs", [])]
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    return {str(f.relative_to(project)): sha256(f) for f in files}


def test_a_clone_pulls_what_a_teammate_pushed_and_reproduces_nothing(mlflow_server, tmp_path):
    uri = mlflow_server.uri
    project = make_project(tmp_path / "p")
    assert "train" in ran(dvc(project, "repro", uri=uri).stdout)
    remote = tmp_path / "remote"
    dvc(project, "remote", "add", "-d", "team", str(remote))
    commit(project, "the DAG's dvc.lock, and the team's DVC remote")
    pushed = dvc(project, "push", "--run-cache")
    assert list((remote / "files/md5").rglob("*")) and list((remote / "runs").rglob("*")), pushed.stdout
    trained = outputs(project)
    assert {"models/checkpoint.pt", "reports/report.md", "samples/samples.npz"} <= set(trained)

    # a teammate: a fresh clone holds dvc.lock but none of the outputs, then pulls them
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], cwd=tmp_path)
    assert not (clone / "models").exists() and not (clone / "reports/report.md").exists()
    dvc(clone, "pull")
    assert outputs(clone) == trained
    status = json.loads(dvc(clone, "status", "--json").stdout)
    assert status == {"registry/dvc.yaml:register": ["always changed"]}, status
    again = dvc(clone, "repro", uri=uri)
    said = again.stdout + again.stderr
    assert ran(again.stdout) == ["register"]  # always_changed: it asks the shared registry, which has the version
    assert re.search(rf"{MODEL} version 1 already holds checkpoint sha256 \w+ at {re.escape(uri)}: nothing to "
                     "register", said), said
    for stage in ("prepare", "classifier", "train", "sample", "evaluate", "promote", "report"):
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout
    assert (clone / "reports/report.md").read_bytes() == (project / "reports/report.md").read_bytes()
    assert outputs(clone) == trained
    assert run(["git", "status", "--porcelain"], cwd=clone).stdout == ""  # dvc.lock as the teammate left it

    # another teammate does not pull first: `dvc repro --pull` fetches what it would otherwise re-run
    lazy = tmp_path / "lazy"
    run(["git", "clone", "-q", str(project), str(lazy)], cwd=tmp_path)
    pulled = dvc(lazy, "repro", "--pull", uri=uri)
    assert ran(pulled.stdout) == ["register"], pulled.stdout
    assert (lazy / "reports/report.md").read_bytes() == (project / "reports/report.md").read_bytes()
    assert outputs(lazy) == trained


# ---------------------------------------------------------------------------- Prefect: a process work pool
POOL = "scale-out"


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    e = env()
    e.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
             PREFECT_SERVER_UI_ENABLED="false", PREFECT_WORKER_QUERY_SECONDS="2")
    if api_url:
        e["PREFECT_API_URL"] = api_url
    return e


@pytest.fixture()
def prefect_server(tmp_path):
    """`prefect server start` on 127.0.0.1 (its database in a temporary PREFECT_HOME); yields (home, API URL)."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    e, port = prefect_env(home), free_port()
    if fastapi_rejects_min_items():  # see tests/test_flows.py: the server's process gets the shim
        site = tmp_path / "fastapi-compat"
        site.mkdir()
        (site / "sitecustomize.py").write_text(FASTAPI_COMPAT)
        e["PYTHONPATH"] = os.pathsep.join([str(site), e["PYTHONPATH"]])
    log = tmp_path / "prefect-server.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=tmp_path, env=e, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        api_url = f"http://127.0.0.1:{port}/api"
        wait_http(f"{api_url}/health", proc, log)
        yield home, api_url
    finally:
        stop(proc)


@pytest.fixture()
def process_worker(prefect_server, tmp_path):
    """`prefect worker start --pool scale-out --type process` (it creates the pool); yields (process, log file)."""
    home, api_url = prefect_server
    log = tmp_path / "prefect-worker.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", POOL,
                             "--type", "process"], cwd=tmp_path, env=prefect_env(home, api_url),
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, log
    finally:
        stop(proc)


def test_a_process_worker_runs_the_retrain_deployment(prefect_server, process_worker, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from pipeline.flows.dvc_bridge import dvc_stages
    from pipeline.flows.retrain import retrain

    home, api_url = prefect_server
    worker, worker_log = process_worker
    project = make_project(tmp_path / "p")
    with temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_HOME: home}):
        with get_client(sync_client=True) as c:  # the worker creates its pool when it starts
            deadline = time.monotonic() + 180
            while True:
                assert worker.poll() is None, worker_log.read_text()[-3000:]
                try:
                    assert c.read_work_pool(POOL).type == "process"
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no work pool {POOL}:\n{worker_log.read_text()[-3000:]}") from None
                    time.sleep(1)
        # the flow's code is the project copy (a set_working_directory pull step); project_dir defaults to it
        deployment_id = retrain.from_source(source=str(project), entrypoint="pipeline/flows/retrain.py:retrain").deploy(
            name="scale-out", work_pool_name=POOL, print_next_steps=False, ignore_warnings=True)
        # about 4 minutes on an idle 2-core machine; up to 30 where other jobs compete for the cores
        flow_run = run_deployment(deployment_id, timeout=3600, poll_interval=3)
        with get_client(sync_client=True) as c:
            this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            tasks = {t.name: t.state.type.value for t in c.read_task_runs(flow_run_filter=this_run, limit=200)}
    said = worker_log.read_text()
    assert flow_run.state.type.value == "COMPLETED", f"{flow_run.state.message}\n{said[-3000:]}"
    assert flow_run.work_pool_name == POOL and str(flow_run.id) in said  # the worker, not this process, ran it
    assert tasks == {s.name: "COMPLETED" for s in dvc_stages(project)}
    for out in ("data/prepared/meta.json", "models/checkpoint.pt", "models/registered.json", "samples/samples.npz",
                "reports/metrics/evaluate.json", "reports/metrics/registry.json", "reports/report.md",
                "reports/report.html"):
        assert (project / out).is_file(), out
    status = json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project).stdout)
    # every stage ran through DVC, which recorded it
    assert status == {"registry/dvc.yaml:register": ["always changed"]}, status
