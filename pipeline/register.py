"""Stage register: the trained generator as a version of the registered MLflow model, alias `candidate`.

Idempotent and declared `always_changed` in dvc.yaml: it asks the registry every time, so a
registry that lacks the checkpoint (a new tracking server, DVC's run-cache restoring train's
outputs) gets it, and one that has it gets no second version.
"""

import shutil
import tempfile
from importlib.metadata import version as installed
from pathlib import Path

import ddpm
from ddpm.config import Config, config_from_dict
from ddpm.io import write_json
from pipeline import paths
from pipeline.stage import log, run
from pipeline.tracking import pipeline_run

MODEL_CODE = Path(ddpm.__file__).parent / "generator_model.py"
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pyyaml", "tqdm")


def register(cfg: Config) -> None:
    from ddpm.tracking import CANDIDATE

    name = cfg.tracking.model_name
    with pipeline_run(cfg) as run_:
        tracker = run_.tracker
        found = tracker.find_version(name, run_.checkpoint_sha256)
        if found is None:
            from ddpm.train import load_checkpoint  # torch: only when there is something to register

            trained = config_from_dict(load_checkpoint(paths.CHECKPOINT)["config"]).data
            with tempfile.TemporaryDirectory() as tmp:  # the library without caches, bundled with the model
                code = shutil.copytree(MODEL_CODE.parent, Path(tmp) / "ddpm",
                                       ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                found = tracker.register_generator(
                    run_.run_id, name, model_code=MODEL_CODE, checkpoint=paths.CHECKPOINT,
                    checkpoint_sha256=run_.checkpoint_sha256, code_dir=code,
                    image_shape=(trained.image_size, trained.image_size, trained.channels),
                    pip_requirements=[f"{p}=={installed(p)}" for p in REQUIREMENTS])
            log.info("registered %s version %s (checkpoint sha256 %s)", name, found.version, run_.checkpoint_sha256[:12])
        else:
            log.info("%s version %s already holds checkpoint sha256 %s: nothing new registered", name,
                     found.version, run_.checkpoint_sha256[:12])
        version = str(found.version)
        tracker.set_alias(name, CANDIDATE, version)
        tracker.log_once(run_.run_id, "registration", f"{name}/{version}",
                         lambda: {"tags": {"ddpm.model": name, "ddpm.model_version": version}})
    write_json(paths.REGISTERED, {"model": name, "version": version,
                                  "checkpoint_sha256": run_.checkpoint_sha256, "source_run_id": found.run_id})


if __name__ == "__main__":
    run(register)
