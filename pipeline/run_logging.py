"""The stages' side of MLflow: which backend, which run, and what each stage's files become there.

One MLflow run per pipeline state: the run is keyed by the SHA-256 of models/checkpoint.pt and
of the parameters (tags ddpm.checkpoint_sha256, ddpm.params_sha256). Whichever tracking stage
meets a state first creates its run and logs the training side (every parameter, the loss
curve, provenance) from train's output files, so a train stage restored from DVC's run-cache,
or a new tracking server, still gets a complete run; the other stages find it by its tags.
Every logging step is idempotent (ddpm.logged.* markers): re-running adds nothing.

train, sample and evaluate never talk to MLflow: a tracking outage can not cost their work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ddpm.config import Config
from ddpm.errors import DataError
from ddpm.io import sha256_file
from ddpm.tracking.names import redact, run_page_url
from pipeline import paths
from pipeline.stage import read_json, read_loss_curve, read_train_eval

if TYPE_CHECKING:  # importing MLflow takes seconds: only the stages that log pay for it
    from ddpm.tracking.mlflow_client import Tracker


def file_sha256(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path} not found: run the stage that writes it first (dvc repro)")
    return sha256_file(path)


def fingerprint(*files: Path) -> str:
    return hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()[:16]


def params_sha256(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()


def run_key(cfg: Config) -> dict[str, str]:
    """The tags that key the run of this pipeline state: the checkpoint's and the parameters' SHA-256."""
    return {"ddpm.checkpoint_sha256": file_sha256(paths.CHECKPOINT), "ddpm.params_sha256": params_sha256(cfg)}


def tracking_uri() -> tuple[str, str]:
    """The tracking URI and how an error message should name it."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env, f"MLFLOW_TRACKING_URI={redact(env)}"
    uri = f"sqlite:///{paths.MLFLOW_DB.resolve()}"
    return uri, f"the project's {uri} (MLFLOW_TRACKING_URI is unset)"


def connect(cfg: Config) -> Tracker:
    from ddpm.tracking.mlflow_client import Tracker

    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # a retry is not news; the failure is
    uri, where = tracking_uri()
    local = not os.environ.get("MLFLOW_TRACKING_URI")
    return Tracker(uri, cfg.tracking.experiment, where=where,
                   artifact_location=paths.MLFLOW_ARTIFACTS.resolve().as_uri() if local else None)


@dataclass
class PipelineRun:
    tracker: Tracker
    run_id: str
    checkpoint_sha256: str


@contextlib.contextmanager
def pipeline_run(cfg: Config) -> Iterator[PipelineRun]:
    """The MLflow run of this pipeline state, created with the training side logged if it is new."""
    from ddpm.tracking.mlflow_client import flatten, split_values

    tracker = connect(cfg)
    key = run_key(cfg)
    run_id = tracker.find_run(key)
    if run_id is None:
        name = f"ddpm-{key['ddpm.checkpoint_sha256'][:8]}-{key['ddpm.params_sha256'][:8]}"
        run_id = tracker.create_run(name, key)

    def training() -> dict:
        stats = read_json(paths.TRAIN_METRICS)["train"]
        metrics, tags = split_values(flatten({"train": stats}))
        quality = [{"step": r["step"], "train_eval.fid": r["fid"], "train_eval.confident": r["confident"]}
                   for r in read_train_eval() or []]  # quality during training, as metric curves
        return {"params": flatten(cfg.to_dict()), "series": read_loss_curve() + quality, "metrics": metrics,
                "tags": {**{f"ddpm.{k}": v for k, v in tags.items()}, **provenance(stats)}}

    logged = [paths.LOSS_CURVE, paths.TRAIN_METRICS] + ([paths.TRAIN_EVAL] if paths.TRAIN_EVAL.is_file() else [])
    tracker.log_once(run_id, "training", fingerprint(*logged), training)
    yield PipelineRun(tracker, run_id, key["ddpm.checkpoint_sha256"])
    tracker.finish(run_id)


def provenance(train_stats: dict) -> dict[str, str]:
    """Git commit, the dvc.lock hashes of the data and the checkpoint, torch/CUDA, the training device."""
    import torch

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock")
    return {
        "mlflow.source.git.commit": commit or "unknown (not a git checkout)",
        "ddpm.git_dirty": "unknown" if changed is None else str(bool(changed)).lower(),
        "ddpm.dvc_lock.data_md5": lock_hash("prepare", paths.PREPARED),
        "ddpm.dvc_lock.checkpoint_md5": lock_hash("train", paths.CHECKPOINT),
        "ddpm.torch": torch.__version__,
        "ddpm.cuda": torch.version.cuda or "none",
        "ddpm.device": str(train_stats.get("device")),  # where train ran (ddpm.gpu: what this machine has)
        "ddpm.gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }


def lock_hash(stage: str, out: Path) -> str:
    """The md5 dvc.lock records for a stage's output ("absent" when the stage has not been locked)."""
    try:
        lock = yaml.safe_load(Path("dvc.lock").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "absent"
    for entry in lock.get("stages", {}).get(stage, {}).get("outs", []):
        if Path(entry.get("path", "")) == out:
            return str(entry.get("md5", "absent"))
    return "absent"


def log_report(cfg: Config) -> None:
    """The report stage's files and the metrics only it reads (classifier, sampler sweep) into the run."""
    from ddpm.tracking.mlflow_client import flatten, split_values

    files = [paths.REPORT_MD, paths.REPORT_HTML, paths.LOSS_FIGURE]

    def report() -> dict:
        metrics, tags = split_values(flatten({**read_json(paths.CLASSIFIER_METRICS), **read_json(paths.SWEEP_METRICS)}))
        return {"metrics": metrics, "tags": {f"ddpm.{k}": v for k, v in tags.items()},
                "artifacts": {"": files[:2], "figures": files[2:]}}

    with pipeline_run(cfg) as run:
        run.tracker.log_once(run.run_id, "report", fingerprint(*files, paths.CLASSIFIER_METRICS, paths.SWEEP_METRICS),
                             report)


def mlflow_run_url(root: Path) -> str | None:
    """The MLflow run of this pipeline state as a web link, or None.

    The promote stage records the run in reports/metrics/registry.json ("tracking_uri", credentials
    redacted, "experiment_id", "run_id"). Only an http(s) tracking server has a web page: the
    project's local sqlite:///mlflow.db gives no link, and neither does a project promote has not run in.
    """
    try:
        reference = json.loads((root / paths.REGISTRY_METRICS).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(reference, dict):
        return None
    uri, experiment, run = (reference.get(k) for k in ("tracking_uri", "experiment_id", "run_id"))
    if not (uri and experiment is not None and run):
        return None
    return run_page_url(str(uri), experiment, run)
