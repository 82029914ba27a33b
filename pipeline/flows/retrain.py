"""The Prefect flow `retrain`: params.yaml overrides, then every DVC stage as one task, in DVC's order.

    python -m pipeline.flows.retrain                              # one retraining run ($PREFECT_API_URL)
    python -m pipeline.flows.retrain -S train.steps=2000 -S data.source=folder -S data.root=/data/digits
    python -m pipeline.flows.deployments                        # serve the nightly / new-data deployments

A flow run works in the workspace, as `dvc exp run -S` does without --temp: overrides are written to
params.yaml (pipeline/overrides.py), outputs and dvc.lock are updated in place, one run at a time
(pipeline/flows/workspace_lock.py; docs/orchestration.md). The stages come from dvc.yaml and each
runs as `dvc repro --single-item` (pipeline/flows/dvc_bridge.py, which also decides what is retried). The
flow stops at the first failed stage, as `dvc repro` does; at the end it publishes the report, the
metrics and the link to the MLflow run (pipeline/flows/artifacts.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from ddpm.errors import DataError, UserError
from pipeline.flows.artifacts import publish_artifacts
from pipeline.flows.data_check import data_checksums, short
from pipeline.flows.dvc_bridge import StageDiverged, StageInputError, dvc_stages, run_stage
from pipeline.flows.workspace_lock import workspace_lock
from pipeline.overrides import check_overrides, set_params
from pipeline.stage import EXIT_BAD_INPUT, EXIT_DIVERGED

ROOT = Path(__file__).resolve().parents[2]  # pipeline/flows/retrain.py -> the project
DEFAULT_LOCK_TIMEOUT_S = 3600.0
# the workspace `python -m pipeline.flows.deployments --project DIR` serves, for the flow runs it starts; unset, the
# checkout this file is in (a process worker runs the flow from its own checkout)
SERVED_WORKSPACE = "DDPM_SERVED_WORKSPACE"


def served_workspace() -> Path:
    return Path(os.environ.get(SERVED_WORKSPACE) or ROOT).expanduser().resolve()


def _started_through_a_deployment() -> bool:
    from prefect.runtime import deployment

    return deployment.id is not None


def project_root(project_dir: str | os.PathLike | None = None) -> Path:
    """The project a flow run works in: `project_dir`, or the served workspace.

    A deployment's run (started by a schedule or by anyone who can reach the Prefect API, which has no
    authentication) works only in the served workspace: a folder of the caller's with its own dvc.yaml would run
    its commands as the serving user. A direct call (python -m pipeline.flows.retrain --project DIR, or retrain()
    from Python) is the local user's own choice of folder.
    """
    served = served_workspace()
    root = Path(project_dir).expanduser().resolve() if project_dir else served
    if root != served and _started_through_a_deployment():
        raise UserError(f"project_dir {root} is not the served workspace {served}: a deployment's run works only "
                        "there; serve that folder instead (python -m pipeline.flows.deployments --project DIR)")
    if not (root / "dvc.yaml").is_file():
        raise UserError(f"{root} holds no dvc.yaml: point project_dir (--project) at the project folder")
    return root


def _flow_run_holder() -> str:
    from prefect.runtime import flow_run

    return f"flow run {flow_run.name!r} ({flow_run.id})" if flow_run.id else f"pid {os.getpid()}"


@flow(name="retrain", description="Reproduce the DVC DAG stage by stage (dvc repro --single-item), "
                                  "with params.yaml overrides as `dvc exp run -S` takes them.")
def retrain(overrides: list[str] | None = None, force: list[str] | None = None, project_dir: str | None = None,
            lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> dict[str, Any]:
    """Retrain: apply `overrides` (e.g. "train.steps=2000") to params.yaml, then every stage in DVC's order.

    force: stages to re-run even if DVC finds them unchanged (`dvc repro --force`); `prepare` is forced by
    itself when the data source differs from the prepared data (pipeline/flows/data_check.py). lock_timeout_s: how long to wait for another
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
        if "prepare" in names and "prepare" not in force:  # DVC does not hash the data source
            try:
                prepared, source = data_checksums(root)
            except DataError:  # prepare itself reports a source it cannot read, as its stage's one line
                prepared, source = None, {"unreadable": "source"}
            if prepared != source:
                logger.info("the data source (%s) differs from data/prepared/meta.json (%s): prepare re-runs",
                            short(source), short(prepared))
                force.append("prepare")
        logger.info("DVC stages in order: %s", " -> ".join(names))
        if any(stage.always_changed for stage in stages):
            logger.info("always_changed (DVC runs them every time): %s",
                        ", ".join(stage.name for stage in stages if stage.always_changed))
        futures: dict[str, Any] = {}
        results: list[dict[str, Any]] = []
        for i, (name, target, upstream, _) in enumerate(stages):
            future = run_stage.with_options(task_run_name=name, tags={"dvc", f"stage:{name}"}).submit(
                str(root), target, force=name in force, wait_for=[futures[u] for u in upstream if u in futures])
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
        sys.exit(EXIT_BAD_INPUT)
    state = retrain(overrides=args.overrides, force=args.force, project_dir=args.project,
                    lock_timeout_s=args.lock_timeout, return_state=True)
    if state.is_completed():
        print(json.dumps(state.result()["stages"]))
        return
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, (StageInputError, StageDiverged)):  # already "error: <stage>: ..."
        print(exc, file=sys.stderr)
    else:
        print(f"error: retrain: {exc}", file=sys.stderr)
    code = EXIT_DIVERGED if isinstance(exc, StageDiverged) else EXIT_BAD_INPUT if isinstance(exc, UserError) else 1
    sys.exit(code)


if __name__ == "__main__":
    main()
