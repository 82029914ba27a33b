"""Stage promote: log the evaluation into the run and let the champion gate decide.

The candidate (register's version) becomes `champion` only when it beats the current champion
on tracking.champion_metric measured the same way: same feature space and weights, same N,
same held-out split (and, for the domain space, the same classifier). The decision and its
reason go to the run and to reports/metrics/registry.json, which the report renders; the file
also names the run (tracking URI without credentials, experiment id, run id) for the Prefect flow.
It re-runs when the evaluation, the parameters or the registration (models/registered.json,
which changes with the tracking backend) change; a run takes its decision once.
"""

from ddpm.config import Config
from ddpm.io import write_json
from ddpm.tracking.names import redact
from pipeline import paths
from pipeline.run_logging import file_sha256, fingerprint, pipeline_run
from pipeline.stage import log, read_json, run


def measurement(cfg: Config, evaluation: dict) -> dict:
    """The champion metric's value and what it must share with another to be compared."""
    space, _, name = cfg.tracking.champion_metric.partition(".")
    m = evaluation[space]
    under = {"space": space, "weights": m["weights"], "n_samples": m["n_samples"], "n_reference": m["n_reference"],
             "held_out_sha256": read_json(paths.DATA_META)["sha256"]["test"]}
    if space == "domain":
        under["classifier_sha256"] = file_sha256(paths.CLASSIFIER)
    return {"metric": cfg.tracking.champion_metric, "value": float(m[name]), "under": under}


def promote(cfg: Config) -> None:
    from ddpm.tracking.mlflow_client import flatten, split_values

    registered = read_json(paths.REGISTERED)
    evaluation, sample = read_json(paths.EVALUATE_METRICS), read_json(paths.SAMPLE_METRICS)

    def logged() -> dict:
        metrics, tags = split_values(flatten({**sample, **evaluation}))
        return {"metrics": metrics, "tags": {f"ddpm.{k}": v for k, v in tags.items()},
                "artifacts": {"figures": [paths.SAMPLE_GRID]}}

    with pipeline_run(cfg) as run_:
        run_.tracker.log_once(run_.run_id, "evaluation",
                              fingerprint(paths.SAMPLE_METRICS, paths.EVALUATE_METRICS, paths.SAMPLE_GRID), logged)
        decision = run_.tracker.champion_gate(run_.run_id, registered["model"], registered["version"],
                                              measurement(cfg, evaluation))
        # the run's address (decision["run_id"] is the run): what the Prefect flow links to
        where = {"tracking_uri": redact(run_.tracker.uri), "experiment_id": run_.tracker.experiment_id}
    write_json(paths.REGISTRY_METRICS, {**decision, **where})
    log.info("champion gate: %s (%s); champion is %s version %s", decision["decision"], decision["reason"],
             decision["model"], decision["champion"])


if __name__ == "__main__":
    run(promote)
