"""Stage register: the trained generator as a version of the registered MLflow model, alias `candidate`.

Idempotent and declared `always_changed` in registry/dvc.yaml: it asks the registry every time, so a
registry that lacks the checkpoint (a new tracking server, a deleted mlflow.db, DVC's run-cache
restoring train's outputs) gets it, and one that has it gets no second version. The question is
first asked without MLflow (ddpm.tracking.registry_probe: sqlite3 on mlflow.db, or the server's REST API):
when models/registered.json names this checkpoint and the registry still holds it as this stage
leaves it, the stage ends there, in a fraction of a second and without rewriting its output, so a
`dvc repro` with nothing new stays fast; otherwise MLflow registers what is missing.
"""

import json
import shutil
import tempfile
from pathlib import Path

import ddpm
from ddpm.config import Config, config_from_checkpoint
from ddpm.io import write_json
from ddpm.tracking.names import CANDIDATE, logged_marker, redact
from ddpm.tracking.registry_probe import Registration, registry_holds
from pipeline import paths
from pipeline.run_logging import pipeline_run, run_key, tracking_uri
from pipeline.stage import log, run

LIBRARY = Path(ddpm.__file__).parent  # bundled with the model as the package `ddpm`
MODEL_CODE = LIBRARY / "tracking" / "generator_model.py"
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pyyaml", "tqdm")


def registration_mark(name: str, version: str) -> str:
    """What the run of a pipeline state records (tag ddpm.logged.registration) once its version is registered."""
    return f"{name}/{version}"


def still_registered(cfg: Config) -> bool:
    """True when models/registered.json names this checkpoint and the registry holds it as `register` leaves
    it: the version with its checkpoint tag and alias `candidate`, and this pipeline state's run marked as
    registered (parameters changed since: a new run, which registering through MLflow creates)."""
    try:
        recorded = json.loads(paths.REGISTERED.read_text())
    except (OSError, ValueError):  # not written yet, or damaged: register through MLflow
        return False
    key = run_key(cfg)
    name, version = cfg.tracking.model_name, str(recorded.get("version"))
    if recorded.get("model") != name or recorded.get("checkpoint_sha256") != key["ddpm.checkpoint_sha256"]:
        return False
    uri = tracking_uri()[0]
    mark = {logged_marker("registration"): registration_mark(name, version)}
    if not registry_holds(uri, Registration(name, version, key["ddpm.checkpoint_sha256"], cfg.tracking.experiment,
                                            {**key, **mark})):
        return False
    log.info("%s version %s already holds checkpoint sha256 %s at %s: nothing to register", name, version,
             key["ddpm.checkpoint_sha256"][:12], redact(uri))
    return True


def register(cfg: Config) -> None:
    if still_registered(cfg):
        return
    name = cfg.tracking.model_name
    with pipeline_run(cfg) as run_:
        tracker = run_.tracker
        found = tracker.find_version(name, run_.checkpoint_sha256)
        if found is None:
            from importlib.metadata import version as installed  # like torch: only when registering

            from ddpm.checkpoints import load_checkpoint

            trained = config_from_checkpoint(load_checkpoint(paths.CHECKPOINT)["config"]).data
            with tempfile.TemporaryDirectory() as tmp:  # the library without caches, bundled with the model
                code = shutil.copytree(LIBRARY, Path(tmp) / "ddpm",
                                       ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                found = tracker.register_generator(
                    run_.run_id, name, model_code=MODEL_CODE, checkpoint=paths.CHECKPOINT,
                    checkpoint_sha256=run_.checkpoint_sha256, code_dir=code,
                    image_shape=(trained.image_size, trained.image_size, trained.channels),
                    pip_requirements=[f"{p}=={installed(p)}" for p in REQUIREMENTS],
                    model_config={"sample": cfg.to_dict()["sample"]})
            log.info("registered %s version %s (checkpoint sha256 %s)", name, found.version,
                     run_.checkpoint_sha256[:12])
        else:
            log.info("%s version %s already holds checkpoint sha256 %s: nothing new registered", name,
                     found.version, run_.checkpoint_sha256[:12])
        version = str(found.version)
        tracker.set_alias(name, CANDIDATE, version)
        tracker.log_once(run_.run_id, "registration", registration_mark(name, version),
                         lambda: {"tags": {"ddpm.model": name, "ddpm.model_version": version}})
    write_json(paths.REGISTERED, {"model": name, "version": version,
                                  "checkpoint_sha256": run_.checkpoint_sha256, "source_run_id": found.run_id})


if __name__ == "__main__":
    run(register)
