"""Deployments of the retraining flow, served from this checkout: nightly, and when new data lands.

    python -m pipeline.flows.deployments                   # serve them (PREFECT_API_URL: make serve-flows)
    python -m pipeline.flows.deployments --project DIR     # for another checkout of the project

  retrain/nightly        cron 03:00 UTC: `dvc repro` stage by stage; DVC skips what did not change
  check-new-data/poll    every 15 minutes: compares the data source's checksum with the prepared
                         data's (data/prepared/meta.json) and, when they differ, starts ...
  retrain/new-data       ... a retraining run with force=["prepare"] (no schedule of its own)

Why a polling check rather than an event trigger: the data sources (a folder, torchvision's
downloads) emit no events, and dvc.yaml does not track them (prepare depends on code and
parameters only), so something has to look. The check hashes exactly what `prepare` would write
(same loader, same split, same checksum function), so it sees new, removed or edited images and
nothing else. A change gets one run however often the check fires while that run waits, works or has
succeeded, and a new one when it failed (up to NEW_DATA_ATTEMPTS): its runs carry the tag
new-data:<old>-><new>, and an idempotency key per attempt keeps checks that fire at once to one run.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment

from ddpm.errors import UserError
from pipeline.flows.data_check import data_checksums, short
from pipeline.flows.retrain import SERVED_WORKSPACE, project_root, retrain

NIGHTLY_CRON = "0 3 * * *"  # 03:00 UTC
CHECK_EVERY = timedelta(minutes=15)
NEW_DATA_DEPLOYMENT = "retrain/new-data"
NEW_DATA_ATTEMPTS = 3  # runs per data change; a change whose runs all failed needs a person


def runs_for_change(deployment: str, tag: str) -> list:
    """The flow runs of `deployment` started for one data change (tagged `tag`), newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        target = client.read_deployment_by_name(deployment)
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])),
                                     deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[target.id])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=50)


@flow(name="check-new-data", description="Start retrain/new-data when the data source differs from the prepared data.")
def check_new_data(project_dir: str | None = None, deployment: str = NEW_DATA_DEPLOYMENT) -> dict[str, Any]:
    """One retraining run per data change while it waits, works or has succeeded; a new one when the last
    failed (a crash, a full disk, a server down for longer than the stages' retries), up to NEW_DATA_ATTEMPTS."""
    logger = get_run_logger()
    root = project_root(project_dir)
    prepared, source = data_checksums(root)
    if prepared == source:
        logger.info("no new data: the source matches data/prepared/meta.json (%s)", short(source))
        return {"new_data": False, "checksum": short(source)}
    change = f"{short(prepared)}->{short(source)}"
    logger.info("new data: the source is %s, the prepared data %s", short(source), short(prepared))
    earlier = runs_for_change(deployment, f"new-data:{change}")
    going = next((r for r in earlier if r.state is None or not r.state.is_final() or r.state.is_completed()), None)
    if going is not None:
        logger.info("flow run %r (%s) of %s is this change's (%s)", going.name, going.id, deployment,
                    going.state.name if going.state else "no state yet")
        return {"new_data": True, "checksum": short(source), "flow_run_id": str(going.id)}
    if len(earlier) >= NEW_DATA_ATTEMPTS:
        raise UserError(f"new data {change}: all {len(earlier)} runs of {deployment} for it failed (the last: "
                        f"{earlier[0].name!r}): fix what its log says, then start one (prefect deployment run "
                        f"{deployment} -p force='[\"prepare\"]')")
    attempt = len(earlier) + 1
    # the key makes checks that fire at once start one run for this attempt, the tag finds them all later
    run = run_deployment(deployment, parameters={"project_dir": str(root), "force": ["prepare"]}, timeout=0,
                         tags=[f"new-data:{change}"], idempotency_key=f"new-data:{root}:{change}:{attempt}")
    logger.info("started flow run %r (%s) of %s, attempt %d of %d for this change", run.name, run.id, deployment,
                attempt, NEW_DATA_ATTEMPTS)
    return {"new_data": True, "checksum": short(source), "flow_run_id": str(run.id)}


def build(project_dir: str | Path | None = None, cron: str = NIGHTLY_CRON,
          check_every: timedelta = CHECK_EVERY) -> list:
    """The three deployments, their parameters pointing at `project_dir` (default: this checkout)."""
    from prefect.deployments.runner import EntrypointType

    params = {"project_dir": str(project_root(project_dir))}
    common = {"parameters": params, "tags": ["ddpm"], "entrypoint_type": EntrypointType.MODULE_PATH}
    return [
        retrain.to_deployment("nightly", cron=cron, description="Nightly retraining: dvc repro, stage by stage.",
                              **common),
        retrain.to_deployment("new-data", description="Started by check-new-data/poll when the data source "
                                                      "changed; runs with force=['prepare'].", **common),
        check_new_data.to_deployment("poll", interval=check_every,
                                     description="Checksum the data source; start retrain/new-data on a change.",
                                     **common),
    ]


def main(argv: list[str] | None = None) -> None:
    from prefect import serve

    from pipeline.flows.deployments import (
        build,  # not __main__'s copy: the entrypoints must name pipeline.flows.deployments
    )

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", default=None, help="project folder (default: this checkout)")
    parser.add_argument("--cron", default=NIGHTLY_CRON, help=f"nightly schedule (default {NIGHTLY_CRON!r}, UTC)")
    parser.add_argument("--check-every", type=float, default=CHECK_EVERY.total_seconds() / 60,
                        help="minutes between data checks (default 15)")
    args = parser.parse_args(argv)
    try:
        if not args.check_every > 0:
            raise UserError(f"--check-every {args.check_every:g} is out of range: expected minutes > 0")
        try:
            deployments = build(args.project, args.cron, timedelta(minutes=args.check_every))
        except ValueError:  # pydantic's validation of the schedule
            raise UserError(f"--cron {args.cron!r} is not a cron expression: expected five fields "
                            "(minute hour day month weekday), e.g. '0 3 * * *'") from None
    except UserError as exc:
        print(f"error: deployments: {exc}", file=sys.stderr)
        sys.exit(2)
    os.environ[SERVED_WORKSPACE] = str(project_root(args.project))  # inherited by every flow run serve starts
    serve(*deployments)


if __name__ == "__main__":
    main()
