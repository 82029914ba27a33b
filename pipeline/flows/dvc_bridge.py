"""The flow's bridge to DVC: dvc.yaml's stages in repro order, and a Prefect task that runs one of them.

Each task runs `dvc repro --single-item STAGE`, so DVC decides what is cached and each stage's code
exists once, in pipeline/<stage>.py. A failure that would fail again the same way (the stage's
exit code EXIT_BAD_INPUT or EXIT_DIVERGED, pipeline/stage.py) fails the task at once with the
stage's one-line error; anything else (a tracking server that does not answer, DVC's repo lock
held by a manual `dvc repro`, a killed process) is retried with exponential back-off.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from ddpm.errors import UserError
from pipeline.stage import EXIT_BAD_INPUT, EXIT_DIVERGED

RETRIES = 3
BACKOFF_S = 10.0  # retries after 10, 20, 40 s (+-20% jitter)


class StageInputError(UserError):
    """A stage rejected its input (EXIT_BAD_INPUT); the message is the stage's own one-line error."""


class StageDiverged(RuntimeError):
    """Training diverged (EXIT_DIVERGED): the same parameters diverge again; the message is the stage's."""


class StageFailed(RuntimeError):
    """A stage, or DVC around it, failed some other way: worth a retry."""


DETERMINISTIC = (StageInputError, StageDiverged)  # the failures a retry cannot mend


class DvcStage(NamedTuple):
    name: str  # the stage's name in its dvc.yaml: what logs, task runs and `force` say
    target: str  # what `dvc repro` takes: the name, or "registry/dvc.yaml:register" outside the root dvc.yaml
    upstream: list[str]  # the names of the stages whose outputs it depends on
    always_changed: bool  # DVC runs it every time (e.g. a stage that asks a registry outside DVC's view)


def dvc_stages(root: Path) -> list[DvcStage]:
    """The stages `dvc repro` runs (those of dvc.yaml and what they need, register from registry/dvc.yaml
    among them), in its order.

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
        return [DvcStage(s.name, target(s), [d.name for d in graph.successors(s)], bool(s.always_changed))
                for s in order]


def stage_env(root: Path) -> dict[str, str]:
    """The environment of `dvc repro`: this interpreter's `python` first, the project's src/, no bars."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "src"), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the Prefect log as they are printed
    env.setdefault("DDPM_PROGRESS", "0")  # progress bars are not log lines
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def describe_exit(code: int) -> str:
    """A stage's exit code in words. DVC runs the command through $SHELL, or /bin/sh where SHELL is unset:
    bash execs a lone command, so a SIGKILL reads -9; dash waits for it and exits 128 + 9 = 137."""
    number = -code if code < 0 else code - 128 if 128 < code < 128 + signal.NSIG else None
    if number is None:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(number).name}, exit code {code}"
    except ValueError:
        return f"exit code {code}"


def stage_error(stage: str, returncode: int, lines: list[str]) -> Exception:
    """The exception for a failed `dvc repro`, by the stage's exit code: deterministic or worth a retry."""
    text = "\n".join(lines)
    codes = re.findall(r"exited with (-?\d+)", text)  # DVC: "failed to run: CMD, exited with N"
    code = int(codes[-1]) if codes else None
    said = [line for line in lines if line.startswith("error: ")]  # a stage's one-line error
    if code in (EXIT_BAD_INPUT, EXIT_DIVERGED):
        message = said[-1] if said else f"error: {stage}: exited with code {code} (see the task log)"
        return StageInputError(message) if code == EXIT_BAD_INPUT else StageDiverged(message)
    dvc_said = [line for line in lines if line.startswith("ERROR:")]
    detail = (said or dvc_said or lines or ["no output"])[-1]
    what = describe_exit(code) if code is not None else f"dvc exit code {returncode}"
    if "Unable to acquire lock" in text:
        what += "; DVC's repo lock .dvc/tmp/lock is held by another dvc process, e.g. a manual `dvc repro`"
    return StageFailed(f"stage {stage} failed ({what}): {detail}")


def _retry_unless_deterministic(_task, _task_run, state) -> bool:
    """Prefect's retry condition: back-off for transient failures, none for those that would recur."""
    return not isinstance(state.data, DETERMINISTIC)


def _forward(logger: Any, line: str) -> None:
    if line.startswith(("error:", "ERROR:", "Traceback")) or " ERROR " in line:
        logger.error(line)
    elif line.startswith("WARNING:") or " WARNING " in line:
        logger.warning(line)
    else:
        logger.info(line)


@task(name="dvc-stage", tags=["dvc"], cache_policy=NO_CACHE,  # DVC decides what is cached, not Prefect
      retries=RETRIES, retry_delay_seconds=exponential_backoff(BACKOFF_S), retry_jitter_factor=0.2,
      retry_condition_fn=_retry_unless_deterministic)
def run_stage(project_dir: str, target: str, force: bool = False) -> dict[str, Any]:
    """`dvc repro --single-item TARGET` in the project; its output goes to the Prefect log line by line."""
    logger = get_run_logger()
    root = Path(project_dir)
    stage = target.rpartition(":")[2]  # registry/dvc.yaml:register -> register
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", target] + (["--force"] if force else [])
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
