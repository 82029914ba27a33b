"""Prefect flow over the DVC DAG: one task per stage, a workspace lock, report and metrics artifacts.

    python -m pipeline.flows                              # one retraining run ($PREFECT_API_URL)
    python -m pipeline.flows -S train.steps=2000 -S data.source=folder -S data.root=/data/digits
    python -m pipeline.deployments                        # serve the nightly / new-data deployments

The stages and their order come from DVC (dvc.yaml through `Repo.index.graph`, ordered by DVC's own
repro planner), and each task runs `dvc repro --single-item STAGE`: DVC decides what is cached and
each stage's code exists once, in pipeline/<stage>.py. A flow run works in the workspace, as
`dvc exp run -S` does without --temp: overrides are written to params.yaml, outputs and dvc.lock
are updated in place (README, "Scheduled retraining").

Failures: a stage that exits with code 2 (bad input, pipeline/stage.py) fails its task at once with
the stage's one-line error; anything else (a tracking server that hiccups, DVC's repo lock held by a
manual `dvc repro`, a killed process) is retried with exponential back-off. The flow stops at the
first failed stage, as `dvc repro` does: nothing downstream runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from ddpm.config import load_config
from ddpm.errors import ConfigError, UserError
from pipeline import paths

ROOT = Path(__file__).resolve().parent.parent
LOCK = Path(".dvc/tmp/retrain.lock")  # .dvc/tmp is DVC's own scratch folder, ignored by git
LOCK_OWNER = Path(".dvc/tmp/retrain.lock.json")  # who holds LOCK, for the waiting run's message
MLFLOW_HINT = paths.METRICS / "mlflow.json"  # the tracking seam: see mlflow_run_url
BAD_INPUT = 2  # the exit code of a stage that rejects its input (pipeline/stage.py)
RETRIES = 3
BACKOFF_S = 10.0  # retries after 10, 20, 40 s (+-20% jitter)
DEFAULT_LOCK_TIMEOUT_S = 3600.0

log = logging.getLogger("pipeline.flows")


class StageInputError(UserError):
    """A stage rejected its input (exit code 2); the message is the stage's own one-line error."""


class StageFailed(RuntimeError):
    """A stage, or DVC around it, failed some other way: worth a retry."""


class WorkspaceBusy(RuntimeError):
    """Another retraining run holds the workspace lock."""


# ---------------------------------------------------------------------------- the project and DVC
def project_root(project_dir: str | os.PathLike | None = None) -> Path:
    root = Path(project_dir).expanduser().resolve() if project_dir else ROOT
    if not (root / "dvc.yaml").is_file():
        raise UserError(f"{root} holds no dvc.yaml: point project_dir (--project) at the project folder")
    return root


class DvcStage(NamedTuple):
    name: str  # what `dvc repro` takes, relative to the project root
    upstream: list[str]  # the stages whose outputs it depends on
    always_changed: bool  # DVC runs it every time (e.g. a stage that asks a registry outside DVC's view)


def dvc_stages(root: Path) -> list[DvcStage]:
    """The stages of dvc.yaml (and what they need), in the order `dvc repro` runs them.

    DVC's own graph (outputs of one stage that are dependencies of another) and its own planner;
    frozen stages are cut from their dependencies as in `dvc repro`.
    """
    from dvc.dvcfile import PROJECT_FILE
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    def target(stage) -> str:
        name = getattr(stage, "name", None)
        if name is None:
            return stage.path_in_repo
        return name if stage.path_in_repo == PROJECT_FILE else f"{stage.path_in_repo}:{name}"

    with Repo(str(root)) as repo:
        graph = get_active_graph(repo.index.graph)
        order = plan_repro(graph, collect_stages(repo, [str(root / PROJECT_FILE)]))
        return [DvcStage(target(s), [target(d) for d in graph.successors(s)], bool(s.always_changed)) for s in order]


def stage_env(root: Path) -> dict[str, str]:
    """The environment of `dvc repro`: this interpreter's `python` first, the project's src/, no bars."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "src"), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the Prefect log as they are printed
    env.setdefault("DDPM_PROGRESS", "0")  # progress bars are not log lines
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


# ---------------------------------------------------------------------------- parameters
@contextmanager
def _overridden_params(root: Path, overrides: list[str]) -> Iterator[Path]:
    """A copy of params.yaml with `overrides` applied by DVC's own `-S` code and validated by
    `load_config`; yields its path (in .dvc/tmp; params.yaml itself without overrides), removed afterwards."""
    from dvc.utils.hydra import apply_overrides, to_hydra_overrides

    upserts = []
    for item in overrides:
        try:
            (parsed,) = to_hydra_overrides([item])
        except Exception:  # hydra's OverrideParseException, or more than one override in the string
            raise ConfigError(f"override {item!r} is not key=value (as `dvc exp run -S` takes it)") from None
        if parsed.is_sweep_override():
            raise ConfigError(f"override {item!r} is a sweep: a flow run takes one value per key "
                              "(`dvc exp run --queue -S` queues sweeps)")
        if parsed.is_delete():
            raise ConfigError(f"override {item!r} deletes a parameter: set a value instead")
        # DVC's -S only changes existing keys; '++' lets an unknown key through to load_config,
        # whose error names it and the closest valid key.
        upserts.append("++" + item.lstrip("+"))
    params = root / paths.PARAMS
    if not upserts:
        load_config(params)
        yield params
        return
    tmp_dir = root / ".dvc" / "tmp"  # DVC's scratch folder: a killed run leaves no stray file in the project
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="params.", suffix=".yaml", dir=tmp_dir)
    os.close(fd)
    tmp = Path(name)
    try:
        if not params.is_file():
            load_config(params)  # its one-line "not found" error
        tmp.write_bytes(params.read_bytes())
        shutil.copymode(params, tmp)
        try:
            apply_overrides(tmp, upserts)
        except Exception as exc:  # DVC's YAMLFileCorruptedError and the like
            raise ConfigError(f"{params} cannot take the overrides ({exc.__class__.__name__}): "
                              "fix its syntax") from None
        load_config(tmp)  # unknown keys, wrong types, out-of-range values
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def check_overrides(root: Path, overrides: list[str]) -> None:
    """Raise ConfigError (one line) unless params.yaml with `overrides` is a valid configuration."""
    with _overridden_params(root, overrides):
        pass


def set_params(root: Path, overrides: list[str]) -> None:
    """Write `overrides` into params.yaml (atomically: rename of a validated copy)."""
    if overrides:
        with _overridden_params(root, overrides) as tmp:
            os.replace(tmp, root / paths.PARAMS)


# ---------------------------------------------------------------------------- the workspace lock
@contextmanager
def workspace_lock(root: Path, timeout_s: float, holder: str, logger: Any = log) -> Iterator[None]:
    """One retraining run per workspace: a file lock in .dvc/tmp, waited for up to `timeout_s`.

    The lock is released by the OS if its process dies. DVC's own lock (.dvc/tmp/lock) is separate:
    it guards each `dvc repro` call, so a manual `dvc repro` during a flow run makes the running
    stage's task fail and retry with back-off.
    """
    from filelock import FileLock, Timeout

    lock_path, owner = root / LOCK, root / LOCK_OWNER
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(blocking=False)
    except Timeout:  # held by another run
        who = lock_holder(root)
        if timeout_s <= 0:
            raise WorkspaceBusy(f"workspace {root} is busy: {who} holds {LOCK}; not waiting (lock_timeout_s=0): "
                                "try again when it has finished")
        logger.warning("workspace %s is busy: %s holds %s; waiting up to %g s", root, who, LOCK, timeout_s)
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise WorkspaceBusy(f"workspace {root} is busy: {who} held {LOCK} for all of lock_timeout_s={timeout_s:g} "
                                "s: try again when it has finished, or raise lock_timeout_s") from None
        logger.info("workspace lock acquired after waiting")
    try:
        since = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        owner.write_text(json.dumps({"holder": holder, "pid": os.getpid(), "host": socket.gethostname(),
                                     "since": since}) + "\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def lock_holder(root: Path) -> str:
    try:
        info = json.loads((root / LOCK_OWNER).read_text())
        return f"{info['holder']} (pid {info['pid']} on {info['host']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _flow_run_holder() -> str:
    from prefect.runtime import flow_run

    return f"flow run {flow_run.name!r} ({flow_run.id})" if flow_run.id else f"pid {os.getpid()}"


# ---------------------------------------------------------------------------- one stage
def _retry_unless_bad_input(_task, _task_run, state) -> bool:
    """Prefect's retry condition: no retry for a stage's exit code 2, back-off for the rest."""
    return not isinstance(state.data, StageInputError)


def _forward(logger: Any, line: str) -> None:
    if line.startswith(("error:", "ERROR:", "Traceback")) or " ERROR " in line:
        logger.error(line)
    elif line.startswith("WARNING:") or " WARNING " in line:
        logger.warning(line)
    else:
        logger.info(line)


def stage_error(stage: str, returncode: int, lines: list[str]) -> Exception:
    """The exception for a failed `dvc repro`: StageInputError for the stage's exit code 2."""
    text = "\n".join(lines)
    codes = re.findall(r"exited with (-?\d+)", text)  # DVC: "failed to run: CMD, exited with N"
    code = int(codes[-1]) if codes else None
    said = [line for line in lines if line.startswith("error: ")]  # a stage's one-line error
    if code == BAD_INPUT:
        return StageInputError(said[-1] if said else f"error: {stage}: exited with code 2 (see the task log)")
    dvc_said = [line for line in lines if line.startswith("ERROR:")]
    detail = (said or dvc_said or lines or ["no output"])[-1]
    what = f"exit code {code}" if code is not None else f"dvc exit code {returncode}"
    if "Unable to acquire lock" in text:
        what += "; DVC's repo lock .dvc/tmp/lock is held by another dvc process, e.g. a manual `dvc repro`"
    return StageFailed(f"stage {stage} failed ({what}): {detail}")


@task(name="dvc-stage", tags=["dvc"], cache_policy=NO_CACHE,  # DVC decides what is cached, not Prefect
      retries=RETRIES, retry_delay_seconds=exponential_backoff(BACKOFF_S), retry_jitter_factor=0.2,
      retry_condition_fn=_retry_unless_bad_input)
def run_stage(project_dir: str, stage: str, force: bool = False) -> dict[str, Any]:
    """`dvc repro --single-item STAGE` in the project; its output goes to the Prefect log line by line."""
    logger = get_run_logger()
    root = Path(project_dir)
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    logger.info("$ dvc %s   (in %s)", " ".join(cmd[3:]), root)
    start = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=root, env=stage_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line.strip():
                lines.append(line)
                _forward(logger, line)
    if proc.returncode != 0:
        raise stage_error(stage, proc.returncode, lines)
    ran = any(line.startswith("Running stage") for line in lines)
    return {"stage": stage, "status": "ran" if ran else "skipped", "seconds": round(time.monotonic() - start, 1)}


# ---------------------------------------------------------------------------- artifacts
def report_summary(root: Path, results: list[dict[str, Any]]) -> str:
    """reports/report.md up to its parameters, images named instead of shown, and what each stage did."""
    lines = [f"# Retraining run: {root}", "", "| stage | DVC | seconds |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']} |" for r in results]
    report = root / paths.REPORT_MD
    if report.is_file():
        body = report.read_text().split("\n## Parameters", 1)[0]
        body = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", lambda m: f"*{m[1]}: `{paths.REPORTS / m[2]}`*", body)
        lines += ["", f"Full report: `{report}` (and `{root / paths.REPORT_HTML}`).", "", "---", "",
                  body.strip(), "", "*Parameters: `params.yaml`, and the report's last section.*"]
    return "\n".join(lines) + "\n"


def metrics_rows(root: Path) -> list[dict[str, Any]]:
    """reports/metrics/*.json flattened (dotted keys, as `dvc metrics show` prints them)."""
    from dvc.utils.flatten import flatten

    rows = []
    for path in sorted((root / paths.METRICS).glob("*.json")):
        if path.name == MLFLOW_HINT.name:
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:  # shown, not skipped
            rows.append({"file": path.stem, "metric": "(unreadable JSON)", "value": str(exc)})
            continue
        for key, value in flatten(data if isinstance(data, dict) else {"value": data}).items():
            if isinstance(value, (list, dict)):
                value = json.dumps(value)
            rows.append({"file": path.stem, "metric": key, "value": value})
    return rows


def mlflow_run_url(root: Path, environ: dict[str, str] | None = None) -> str | None:
    """The MLflow run of this training, as a web link, or None. The seam for the tracking stage:

    1. reports/metrics/mlflow.json: {"run_url": ...} or {"tracking_uri", "experiment_id", "run_id"};
    2. else the environment: MLFLOW_RUN_URL, or MLFLOW_TRACKING_URI + MLFLOW_EXPERIMENT_ID + MLFLOW_RUN_ID.
    Only http(s) tracking servers give a link (a file or sqlite store has no web page).
    """
    environ = os.environ if environ is None else environ
    hint: dict[str, Any] = {}
    if (root / MLFLOW_HINT).is_file():
        try:
            hint = json.loads((root / MLFLOW_HINT).read_text())
        except ValueError:
            hint = {}
    if not isinstance(hint, dict) or not hint:
        hint = {"run_url": environ.get("MLFLOW_RUN_URL"), "tracking_uri": environ.get("MLFLOW_TRACKING_URI"),
                "experiment_id": environ.get("MLFLOW_EXPERIMENT_ID"), "run_id": environ.get("MLFLOW_RUN_ID")}
    if hint.get("run_url"):
        return str(hint["run_url"])
    uri, exp, run = (hint.get(k) for k in ("tracking_uri", "experiment_id", "run_id"))
    if uri and exp is not None and run and str(uri).startswith(("http://", "https://")):
        return f"{str(uri).rstrip('/')}/#/experiments/{exp}/runs/{run}"
    return None


def publish_artifacts(root: Path, results: list[dict[str, Any]]) -> None:
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    create_markdown_artifact(key="retrain-report", markdown=report_summary(root, results),
                             description=f"reports/report.md of {root}")
    rows = metrics_rows(root)
    if rows:
        create_table_artifact(key="retrain-metrics", table=rows, description="reports/metrics/*.json, flattened")
    url = mlflow_run_url(root)
    if url:
        create_link_artifact(key="mlflow-run", link=url, link_text="MLflow run", description="the tracked run")


# ---------------------------------------------------------------------------- the flow
@flow(name="retrain", description="Reproduce the DVC DAG stage by stage (dvc repro --single-item), "
                                  "with params.yaml overrides as `dvc exp run -S` takes them.")
def retrain(overrides: list[str] | None = None, force: list[str] | None = None, project_dir: str | None = None,
            lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> dict[str, Any]:
    """Retrain: apply `overrides` (e.g. "train.steps=2000") to params.yaml, then every stage in DVC's order.

    force: stages to re-run even if DVC finds them unchanged (`dvc repro --force`), e.g. ["prepare"]
    when the data source changed behind DVC's back. lock_timeout_s: how long to wait for another
    retraining run in the same workspace before failing.
    """
    logger = get_run_logger()
    root = project_root(project_dir)
    overrides, force = list(overrides or []), list(force or [])
    check_overrides(root, overrides)  # a typo fails here, before waiting for the lock
    with workspace_lock(root, lock_timeout_s, _flow_run_holder(), logger):
        set_params(root, overrides)
        if overrides:
            logger.info("params.yaml overridden: %s", ", ".join(overrides))
        stages = dvc_stages(root)
        names = [stage.name for stage in stages]
        unknown = [s for s in force if s not in names]
        if unknown:
            raise UserError(f"force names unknown stage {unknown[0]!r}: choose from {', '.join(names)}")
        logger.info("DVC stages in order: %s", " -> ".join(names))
        if any(stage.always_changed for stage in stages):
            logger.info("always_changed (DVC runs them every time): %s",
                        ", ".join(stage.name for stage in stages if stage.always_changed))
        futures: dict[str, Any] = {}
        results: list[dict[str, Any]] = []
        for i, (name, upstream, _) in enumerate(stages):
            future = run_stage.with_options(task_run_name=name, tags={"dvc", f"stage:{name}"}).submit(
                str(root), name, force=name in force, wait_for=[futures[u] for u in upstream if u in futures])
            future.wait()
            futures[name] = future
            if not future.state.is_completed():
                logger.error("stage %s failed; not run: %s", name, ", ".join(names[i + 1:]) or "none")
                future.result()  # raises the stage's error: the flow run fails with its message
            results.append(future.result())
        publish_artifacts(root, results)
    ran = [r["stage"] for r in results if r["status"] == "ran"]
    logger.info("ran %s; skipped the other %d stage(s)", ", ".join(ran) or "nothing", len(results) - len(ran))
    return {"project_dir": str(root), "overrides": overrides, "stages": {r["stage"]: r["status"] for r in results}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params.yaml key, as `dvc exp run -S` (repeatable)")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help="re-run this stage even if DVC finds it unchanged (repeatable)")
    parser.add_argument("--project", default=None, help="project folder (default: this checkout)")
    parser.add_argument("--lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT_S,
                        help="seconds to wait for another run in the same workspace")
    args = parser.parse_args(argv)
    try:  # bad input: one line and exit code 2 before any flow run starts
        check_overrides(project_root(args.project), args.overrides)
    except UserError as exc:
        print(f"error: retrain: {exc}", file=sys.stderr)
        sys.exit(2)
    state = retrain(overrides=args.overrides, force=args.force, project_dir=args.project,
                    lock_timeout_s=args.lock_timeout, return_state=True)
    if state.is_completed():
        print(json.dumps(state.result()["stages"]))
        return
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, StageInputError):  # already "error: <stage>: ..."
        print(exc, file=sys.stderr)
    else:
        print(f"error: retrain: {exc}", file=sys.stderr)
    sys.exit(2 if isinstance(exc, UserError) else 1)


if __name__ == "__main__":
    main()
