"""Stage train: DDPM training -> models/checkpoint.pt, the loss curve, quality during training, metrics."""

from pathlib import Path

import yaml

from ddpm.config import Config
from ddpm.data import load_split
from ddpm.errors import DataError
from ddpm.evaluation.classifier import load_classifier
from ddpm.io import copy_file, sha256_file, write_csv, write_json
from ddpm.probe import TrainingProbe
from ddpm.runtime import distributed_from_env
from ddpm.snapshots import SnapshotStore, code_sha256, files_sha256
from ddpm.train import train
from pipeline import paths
from pipeline.stage import log, progress_enabled, run

DAG = Path("dvc.yaml")  # its train stage's deps name the code that shapes training (tests/test_dag.py holds that)


def run_origin(cfg: Config) -> dict:
    """What besides the training parameters makes a run: the prepared data, the classifier the probes
    score with (and the confidence they count at), and the code train runs, each by SHA-256."""
    if not DAG.is_file():
        raise DataError(f"{DAG} not found: run the train stage from the project's root")
    code = [dep for dep in yaml.safe_load(DAG.read_text())["stages"]["train"]["deps"] if dep.endswith(".py")]
    probe = {"classifier": sha256_file(paths.CLASSIFIER), "confidence": cfg.evaluate.confidence} \
        if cfg.train.eval_every else None
    return {"data": files_sha256(paths.PREPARED), "probe": probe, "code": code_sha256(code)}


def train_stage(cfg: Config) -> dict:
    tc = cfg.train
    is_main = distributed_from_env().is_main
    split = load_split(paths.TRAIN_SPLIT)  # read first: a missing input is named before the run is identified
    probe = None
    if tc.eval_every:
        probe = TrainingProbe(load_classifier(paths.CLASSIFIER), load_split(paths.TEST_SPLIT).images,
                              num_samples=tc.eval_samples, steps=tc.eval_steps,
                              confidence=cfg.evaluate.confidence, seed=cfg.seed)
    snapshots = SnapshotStore(paths.RESUME, keep=tc.keep_snapshots, origin=run_origin(cfg))
    finished = snapshots.finished(cfg.training_dict())
    if finished is not None:
        log.info("%s holds this run's finished training: writing its outputs without training again",
                 finished.checkpoint)
        timing = {}
    else:
        result = train(cfg, split.images, labels=split.labels, snapshots=snapshots, probe=probe,
                       progress=progress_enabled())
        timing = result.timing
        if not is_main:  # under torchrun only rank 0 writes
            return timing
        # kept before the outputs are written: a failed write, or DVC deleting the outputs, costs no training
        finished = snapshots.finish(result.checkpoint, result.stats)
        last = f", FID {result.evals[-1]['fid']:.3f} at step {result.evals[-1]['step']}" if result.evals else ""
        log.info("trained %d steps in %.0f s (%.0f images/s; evaluation %.0f s), final loss %.4f%s", result.step,
                 timing["train_s"], timing["images_per_s"], timing["eval_s"], result.stats["final_loss"], last)
    if is_main:
        copy_file(finished.checkpoint, paths.CHECKPOINT)
        write_csv(paths.LOSS_CURVE, finished.state["history"], ["step", "loss", "lr"])
        write_csv(paths.TRAIN_EVAL, finished.state["evals"], ["step", "fid", "confident"])
        write_json(paths.TRAIN_METRICS, {"train": finished.stats})
    return timing


if __name__ == "__main__":
    run(train_stage)
