"""MLflow: the champion gate's rule; the tiny DAG against a real `mlflow server` (runs, registry, serving, outage)."""

import csv
import hashlib
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from ddpm.config import config_from_dict
from ddpm.config.groups import CPU_KERNEL_ENV, RuntimeConfig
from ddpm.errors import ConfigError, TrackingUnavailable
from ddpm.tracking.champion import gate
from ddpm.tracking.mlflow_client import Tracker, flatten, redact
from pipeline.stage import EXIT_TEMPORARY
from tests.helpers import copy_project, ran, run, use_profile
from tests.mlflow_server import Server, free_port, mlflow_env, stop, wait_http

MODEL = "ddpm-generator"


# ---------------------------------------------------------------------------- the gate's rule (fast)
def measured(value, n=1000, metric="domain.fid", **under):
    return {"metric": metric, "value": value, "under": {"space": metric.split(".")[0], "weights": "w",
                                                        "n_samples": n, **under}}


def test_first_candidate_becomes_champion():
    d = gate("1", measured(30.0), None, None)
    assert (d["decision"], d["champion"], d["reason"]) == ("promoted", "1", "there was no champion yet")


@pytest.mark.parametrize("value, decision, champion", [(20.0, "promoted", "2"), (30.0, "kept", "1"),
                                                       (40.0, "kept", "1"), (float("nan"), "kept", "1")])
def test_lower_fid_wins_and_ties_keep_the_champion(value, decision, champion):
    d = gate("2", measured(value), "1", measured(30.0))
    assert (d["decision"], d["champion"]) == (decision, champion)
    assert "lower is better" in d["reason"] and "N=1000" in d["reason"]


def test_higher_precision_wins():
    d = gate("2", measured(0.6, metric="domain.precision"), "1", measured(0.5, metric="domain.precision"))
    assert (d["decision"], d["direction"]) == ("promoted", "higher is better")


def test_values_at_another_n_or_feature_space_are_not_compared():
    d = gate("2", measured(1.0, n=24), "1", measured(30.0, n=1000))
    assert (d["decision"], d["champion"]) == ("kept", "1")
    assert "not comparable" in d["reason"] and "n_samples (1000 vs 24)" in d["reason"]
    d = gate("2", measured(1.0, classifier_sha256="b"), "1", measured(30.0, classifier_sha256="a"))
    assert d["decision"] == "kept" and "classifier_sha256 (a vs b)" in d["reason"]
    d = gate("2", measured(1.0, metric="inception.fid"), "1", measured(30.0))
    assert d["decision"] == "kept" and "was measured on domain.fid" in d["reason"]


def test_the_champion_stays_champion():
    d = gate("3", measured(50.0), "3", measured(10.0))
    assert (d["decision"], d["champion"]) == ("already champion", "3")


@pytest.mark.parametrize("raw, match", [
    ({"tracking": {"champion_metric": "domain.accuracy"}}, r"tracking\.champion_metric = 'domain\.accuracy'"),
    ({"tracking": {"champion_metric": "inception.fid"}, "evaluate": {"spaces": ["domain"]}},
     r"needs the inception feature space, which evaluate\.spaces = \['domain'\] does not compute"),
    ({"tracking": {"model_name": "a/b"}}, r"tracking\.model_name = 'a/b' is out of range"),
])
def test_bad_tracking_parameters_name_the_key(raw, match):
    with pytest.raises(ConfigError, match=match) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)


def test_a_server_that_is_down_is_one_line_naming_mlflow_tracking_uri():
    t0 = time.perf_counter()
    with pytest.raises(TrackingUnavailable) as info:  # worth a retry: the flow retries it (EXIT_TEMPORARY)
        Tracker(f"http://127.0.0.1:{free_port()}", "ddpm")
    message = str(info.value)
    assert time.perf_counter() - t0 < 20  # MLflow's own defaults retry for minutes
    assert "\n" not in message and "MLFLOW_TRACKING_URI=http://127.0.0.1:" in message
    assert "Connection refused" in message and "start it" in message


def test_credentials_never_reach_a_message():
    assert redact("https://alice:s3cret@mlflow.example.com/x") == "https://***@mlflow.example.com/x"
    assert redact("Invalid url: http://alice:p@ss@host:99999/api") == "Invalid url: http://***@host:99999/api"


def test_a_password_in_a_uri_with_a_bad_port_is_redacted_from_the_stage_error(tmp_path):
    project = copy_project(tmp_path / "p")
    e = {**mlflow_env(), "MLFLOW_TRACKING_URI": "http://alice:s3cret%21@127.0.0.1:99999"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.register"], cwd=project, env=e, capture_output=True,
                          text=True, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output  # a URI that cannot work: fixing it is the user's, not a retry's
    assert "s3cret" not in output and "Invalid url: http://***@127.0.0.1:99999" in output, output
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: register: MLflow at MLFLOW_TRACKING_URI=http://***@127.0.0.1:99999 failed")


def test_logs_warnings_and_tracebacks_of_a_tracking_process_are_redacted():
    code = """if True:
        import logging, warnings
        import ddpm.tracking.mlflow_client
        logging.basicConfig(format="%(message)s")
        logging.getLogger("mlflow").warning("retrying http://bob:hunter22@h:5000/api after %s", "tok-abcdef")
        try:
            raise OSError("connect to h as bob:hunter22 failed")
        except OSError:
            logging.exception("probe failed")
        warnings.warn("sent MLFLOW_TRACKING_TOKEN=tok-abcdef")
        raise RuntimeError("giving up on https://bob:hunter22@h:5000")
    """
    e = {**mlflow_env(), "MLFLOW_TRACKING_URI": "http://bob:hunter22@h:5000", "MLFLOW_TRACKING_TOKEN": "tok-abcdef"}
    proc = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 1 and "RuntimeError: giving up on https://***@h:5000" in proc.stderr, proc.stderr
    assert "retrying http://***@h:5000/api after ***" in proc.stderr and "as bob:***" in proc.stderr
    assert "hunter22" not in proc.stderr + proc.stdout and "tok-abcdef" not in proc.stderr + proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def sqlite_tracker(tmp_path_factory):
    """A Tracker on a local sqlite:/// backend whose connections the test can make busy or full (PRAGMAs run as
    each connection opens; disposing of the engine makes the next call open a new one)."""
    import sqlalchemy

    pragmas: list[str] = []

    def on_connect(connection, _record):
        for pragma in pragmas:
            connection.execute(pragma)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", on_connect)
    db = tmp_path_factory.mktemp("sqlite-backend") / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}", "ddpm")

    def reconnect(*new_pragmas: str) -> None:
        pragmas[:] = new_pragmas
        tracker.client._tracking_client.store.engine.dispose()

    yield tracker, db, reconnect
    reconnect()
    sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", on_connect)


def tracking_stage_exit(tmp_path, monkeypatch, call) -> tuple[int, str]:
    """A stage that makes one tracking call, run as pipeline.stage.run runs every stage: its exit code, its line."""
    import contextlib
    import io

    from pipeline.stage import run as run_stage

    shutil.copy2(Path(__file__).parents[1] / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(err):
        run_stage(lambda cfg: call())
    return info.value.code, err.getvalue()


def test_a_locked_sqlite_database_is_retryable_exit_75(sqlite_tracker, tmp_path, monkeypatch):
    import sqlite3

    tracker, db, reconnect = sqlite_tracker
    reconnect("PRAGMA busy_timeout = 200")  # MLflow waits 20 s for a lock; the same error comes sooner
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer, e.g. a second pipeline on the same mlflow.db
    try:
        code, err = tracking_stage_exit(tmp_path, monkeypatch, lambda: tracker.create_run("r", {"k": "v"}))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        reconnect()
    assert code == EXIT_TEMPORARY, err
    [line] = err.strip().splitlines()
    assert "is busy (database is locked" in line and "re-run" in line


def test_a_full_disk_under_the_backend_is_retryable_exit_75(sqlite_tracker, tmp_path, monkeypatch):
    tracker, _, reconnect = sqlite_tracker
    reconnect("PRAGMA max_page_count = 1")  # SQLITE_FULL, as on a full disk: no page more can be written

    def fill() -> None:
        run_id = tracker.create_run("r", {})
        tracker.log(run_id, tags={f"k{i}": "v" * 400 for i in range(100)})

    try:
        code, err = tracking_stage_exit(tmp_path, monkeypatch, fill)
    finally:
        reconnect()
    assert code == EXIT_TEMPORARY, err
    [line] = err.strip().splitlines()
    assert "cannot write (database or disk is full)" in line and "free disk space" in line


def test_two_promotions_at_once_leave_the_better_model_champion(sqlite_tracker):
    """Promotion B reads the champion (v1), then promotion A (better) moves the alias and checks; B then moves
    it from what it read: without a re-check after the write, the worse model is left champion."""
    tracker, _, _ = sqlite_tracker
    name = "race"
    tracker.client.create_registered_model(name)
    for _ in range(3):
        tracker.client.create_model_version(name, "file:///nowhere", run_id=None)
    old, better, worse = measured(40.0), measured(20.0), measured(30.0)
    assert tracker.champion_gate(tracker.create_run("c", {}), name, "1", old)["champion"] == "1"
    stale = tracker.alias_version(name, "champion")  # what B read before A wrote
    tracker_b = Tracker(tracker.uri, "ddpm")
    reads = iter([stale])
    original = tracker_b.alias_version
    tracker_b.alias_version = lambda model, alias: next(reads, None) or original(model, alias)
    assert tracker.champion_gate(tracker.create_run("a", {}), name, "2", better)["champion"] == "2"
    decision = tracker_b.champion_gate(tracker_b.create_run("b", {}), name, "3", worse)
    assert tracker.alias_version(name, "champion").version == 2
    assert (decision["decision"], decision["champion"]) == ("kept", "2"), decision
    assert "30 >= 20 of champion version 2" in decision["reason"]


def test_served_requests_are_validated():
    from mlflow.exceptions import MlflowException

    from ddpm.config.groups import SampleConfig
    from ddpm.tracking.generator_model import request_config

    registered = SampleConfig(sampler="dpmpp_2m", steps=20, seed=7)  # what the model was registered with
    cfg = request_config({"num_samples": 5, "seed": float("nan")}, registered, 1000)  # a missing cell
    assert (cfg.num_samples, cfg.sampler, cfg.steps, cfg.seed, cfg.batch_size) == (5, "dpmpp_2m", 20, 7, 5)
    for row, match in [({}, "num_samples is required"), ({"num_samples": 0}, "num_samples = 0 is out of range"),
                       ({"num_samples": 2, "sampler": "euler"}, "choose one of 'ddpm', 'ddim', 'dpmpp_2m'"),
                       ({"num_samples": 2, "steps": 1001}, "steps = 1001 is out of range: .* at most 1000"),
                       ({"num_samples": 10**6}, "at most 4096")]:
        with pytest.raises(MlflowException, match=match):
            request_config(row, registered, 1000)


# ---------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("tracked") / "p")
    use_profile(project, "tiny")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sweep"]["ddpm"] = False  # the 50-step DDPM sweep row is not what these tests are about
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        run(cmd, cwd=project)
    return project


def tracked(cmd: list[str], project: Path, uri: str | None, check: bool = True) -> subprocess.CompletedProcess:
    e = mlflow_env()
    e.pop("MLFLOW_TRACKING_URI", None)
    if uri:
        e["MLFLOW_TRACKING_URI"] = uri
    proc = subprocess.run(cmd, cwd=project, env=e, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def repro(project: Path, uri: str | None, check: bool = True) -> subprocess.CompletedProcess:
    return tracked([sys.executable, "-m", "dvc", "repro"], project, uri, check)


@pytest.fixture(scope="module")
def first_repro(server, project) -> str:
    """The whole tiny DAG, once, against the server: what every later test starts from (its output)."""
    return repro(project, server.uri).stdout


def project_copy(project: Path, dest: Path) -> Path:
    """The project with its outputs, DVC cache and git history, for a test that changes it."""
    return Path(shutil.copytree(project, dest, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlruns")))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def runs(uri: str):
    c = client(uri)
    return c.search_runs([c.get_experiment_by_name("ddpm").experiment_id], order_by=["attributes.start_time ASC"])


def versions(uri: str) -> list[str]:
    return sorted(str(v.version) for v in client(uri).search_model_versions(f"name = '{MODEL}'"))


def aliases(uri: str) -> dict[str, str]:
    return {k: str(v) for k, v in client(uri).get_registered_model(MODEL).aliases.items()}


def flat_params(project: Path) -> dict[str, str]:
    return {k: str(v) for k, v in flatten(yaml.safe_load((project / "params.yaml").read_text())).items()}


def lock_md5(project: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


@pytest.mark.slow
def test_repro_logs_one_run_and_registers_one_version(first_repro, server, project):
    assert {"register", "promote", "report"} <= set(ran(first_repro))
    [r] = runs(server.uri)
    c, run_id = client(server.uri), r.info.run_id
    # every parameter, flattened; log_model adds the model's config (the sample parameters) as "sample/KEY"
    params = flat_params(project)
    assert {k: v for k, v in r.data.params.items() if "/" not in k} == params
    assert {k.replace("/", "."): v for k, v in r.data.params.items() if "/" in k} == \
        {k: v for k, v in params.items() if k.startswith("sample.")}
    # the loss curve and learning rate per logged step, as reports/plots/loss.csv has them
    with open(project / "reports/plots/loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3  # 6 steps, logged every 2
    for key in ("loss", "lr"):
        history = c.get_metric_history(run_id, key)
        assert [(m.step, m.value) for m in history] == [(int(r["step"]), pytest.approx(float(r[key]))) for r in rows]
    # evaluation metrics with their feature space and N
    evaluation = json.loads((project / "reports/metrics/evaluate.json").read_text())
    assert r.data.metrics["domain.fid"] == pytest.approx(evaluation["domain"]["fid"])
    assert r.data.metrics["domain.floor.fid"] == pytest.approx(evaluation["domain"]["floor"]["fid"])
    assert r.data.metrics["domain.n_samples"] == 24 and r.data.tags["ddpm.domain.weights"].startswith("domain")
    assert r.data.metrics["nll.bits_per_dim"] == pytest.approx(evaluation["nll"]["bits_per_dim"])
    assert r.data.metrics["nll.standard_error"] == pytest.approx(evaluation["nll"]["standard_error"])
    assert r.data.metrics["train.steps"] == 6 and "sweep.ddim_4.fid" in r.data.metrics
    # sample grid, loss plot and the report
    files = {a.path for a in c.list_artifacts(run_id)} | {a.path for a in c.list_artifacts(run_id, "figures")}
    assert {"report.md", "report.html", "figures/samples.png", "figures/loss.png"} <= files
    # provenance
    tags = r.data.tags
    head = run(["git", "rev-parse", "HEAD"], cwd=project).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head
    assert tags["ddpm.dvc_lock.checkpoint_md5"] == lock_md5(project, "train", "models/checkpoint.pt")
    assert tags["ddpm.dvc_lock.data_md5"] == lock_md5(project, "prepare", "data/prepared")
    assert tags["ddpm.checkpoint_sha256"] == sha256(project / "models/checkpoint.pt")
    assert tags["ddpm.torch"].startswith("2.") and tags["ddpm.device"] == "cpu"
    # the registry: one version holding this checkpoint, candidate and (no champion before) champion
    assert versions(server.uri) == ["1"]
    version = c.get_model_version(MODEL, "1")
    assert version.tags["checkpoint_sha256"] == sha256(project / "models/checkpoint.pt")
    assert version.tags["run_id"] == run_id and version.run_id == run_id
    assert aliases(server.uri) == {"candidate": "1", "champion": "1"}
    registry = json.loads((project / "reports/metrics/registry.json").read_text())
    assert (registry["decision"], registry["champion"], registry["run_id"]) == ("promoted", "1", run_id)
    assert (registry["tracking_uri"], registry["experiment_id"]) == (server.uri, r.info.experiment_id)  # flow link
    assert tags["ddpm.gate.decision"] == "promoted" and "no champion yet" in tags["mlflow.note.content"]
    report = (project / "reports/report.md").read_text()
    assert "## Model registry (MLflow)" in report and "Champion gate: **promoted**" in report


@pytest.mark.slow
def test_second_repro_adds_no_version_run_or_point(first_repro, server, project):
    out = repro(project, server.uri).stdout
    assert ran(out) == ["register"]  # it asks the registry every time; nothing else re-runs
    assert versions(server.uri) == ["1"] and len(runs(server.uri)) == 1
    run_id = runs(server.uri)[0].info.run_id
    assert len(client(server.uri).get_metric_history(run_id, "loss")) == 3
    assert len(client(server.uri).get_metric_history(run_id, "domain.fid")) == 1


@pytest.mark.slow
def test_served_champion_generates_the_pipelines_images(first_repro, server, project, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    e = mlflow_env()
    e["MLFLOW_TRACKING_URI"] = server.uri
    e.update(CPU_KERNEL_ENV[RuntimeConfig.cpu_isa])  # the kernels the stages ran: the same bytes
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=e, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, log)
        # only the count: sampler, steps, seed and batch default to the registered sample parameters
        images = np.asarray(invoke(port, {"dataframe_records": [{"num_samples": 24}]})["predictions"])
        assert images.shape == (24, 28, 28, 1) and images.min() >= 0 and images.max() <= 255
        with np.load(project / "samples/samples.npz") as z:
            np.testing.assert_array_equal(images, z["images"])  # the registered checkpoint, the same sampler
        other = {"num_samples": 24, "sampler": "ddim", "steps": 4, "seed": 1, "batch_size": 12}
        assert not np.array_equal(np.asarray(invoke(port, {"dataframe_records": [other]})["predictions"]), images)
        with pytest.raises(urllib.error.HTTPError) as info:
            invoke(port, {"dataframe_records": [{"num_samples": 2, "sampler": "euler"}]})
        assert info.value.code == 400 and "choose one of 'ddpm', 'ddim'" in info.value.read().decode()
    finally:
        stop(proc)


def invoke(port: int, payload: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_server_down_fails_fast_and_loses_nothing(first_repro, server, project):
    kept = {p: sha256(project / p) for p in ("models/checkpoint.pt", "samples/samples.npz")}
    server.stop()
    proc = tracked([sys.executable, "-m", "pipeline.register"], project, server.uri, check=False)
    assert proc.returncode == EXIT_TEMPORARY, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: register: cannot reach the MLflow tracking server at "
                           f"MLFLOW_TRACKING_URI={server.uri}")
    assert "start it" in line
    assert {p: sha256(project / p) for p in kept} == kept
    server.start()  # the same database, the same port
    out = repro(project, server.uri).stdout
    assert ran(out) == ["register"]  # nothing else was lost or needs re-running
    assert versions(server.uri) == ["1"] and len(runs(server.uri)) == 1


@pytest.fixture()
def server_copy(server, tmp_path):
    """A second server on a copy of the shared one's runs and registry, for a test that adds to them."""
    copy = server.clone(tmp_path / "mlflow")
    copy.start()
    yield copy
    copy.stop()


@pytest.mark.slow
def test_a_second_checkpoint_gets_a_version_and_the_gate_decides(first_repro, server_copy, project, tmp_path):
    """A new checkpoint (the train stage, 8 steps) is a new candidate; the gate moves `champion` by the rule.
    In copies of the project and the server: the shared ones keep one version and their champion."""
    project, uri = project_copy(project, tmp_path / "p"), server_copy.uri
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["steps"] = 8
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("train", "register"):
        tracked([sys.executable, "-m", f"pipeline.{stage}"], project, uri)
    assert versions(uri) == ["1", "2"] and aliases(uri) == {"candidate": "2", "champion": "1"}
    tracker = Tracker(uri, "ddpm")
    run_id = tracker.find_run({"ddpm.checkpoint_sha256": sha256(project / "models/checkpoint.pt")})
    assert run_id and run_id != runs(uri)[0].info.run_id  # a run of its own
    champion = json.loads(client(uri).get_model_version(MODEL, "1").tags["champion_measurement"])
    worse = {**champion, "value": champion["value"] + 1.0}
    d = tracker.champion_gate(run_id, MODEL, "2", worse)
    assert (d["decision"], d["champion"]) == ("kept", "1") and aliases(uri)["champion"] == "1"
    assert tracker.champion_gate(run_id, MODEL, "2", worse) == d  # taken once per run and measurement
    elsewhere = {**champion, "value": 0.0, "under": {**champion["under"], "n_samples": 1000}}
    d = tracker.champion_gate(run_id, MODEL, "2", elsewhere)
    assert d["decision"] == "kept" and "n_samples (24 vs 1000)" in d["reason"]
    better = {**champion, "value": champion["value"] / 2}
    d = tracker.champion_gate(run_id, MODEL, "2", better)
    assert (d["decision"], d["champion"]) == ("promoted", "2") and aliases(uri)["champion"] == "2"
    assert client(uri).get_run(run_id).data.tags["ddpm.gate.decision"] == "promoted"


@pytest.mark.slow
def test_register_fills_a_registry_that_lacks_the_checkpoint(first_repro, project, tmp_path):
    """What DVC's run-cache can not see: a registry without this checkpoint (here the project's own
    sqlite:///mlflow.db, MLFLOW_TRACKING_URI unset). dvc repro runs register every time (always_changed)."""
    project = project_copy(project, tmp_path / "p")
    assert not (project / "mlflow.db").exists()
    tracked([sys.executable, "-m", "pipeline.register"], project, None)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    assert versions(uri) == ["1"] and aliases(uri) == {"candidate": "1"}
    registered = json.loads((project / "models/registered.json").read_text())
    assert registered["version"] == "1" and registered["checkpoint_sha256"] == sha256(project / "models/checkpoint.pt")
    assert list((project / "mlruns").rglob("checkpoint.pt"))  # the project's artifact folder
