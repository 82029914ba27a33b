"""Stage train: DDPM training -> models/checkpoint.pt, the loss curve, quality during training, metrics."""

from ddpm.checkpoints import SnapshotStore, save_checkpoint
from ddpm.config import Config
from ddpm.data import load_split
from ddpm.evaluation.classifier import load_classifier
from ddpm.io import write_csv, write_json
from ddpm.probe import TrainingProbe
from ddpm.runtime import distributed_from_env
from ddpm.train import train
from pipeline import paths
from pipeline.stage import log, progress_enabled, run


def train_stage(cfg: Config) -> dict:
    tc = cfg.train
    split = load_split(paths.TRAIN_SPLIT)
    probe = None
    if tc.eval_every:
        probe = TrainingProbe(load_classifier(paths.CLASSIFIER), load_split(paths.TEST_SPLIT).images,
                              num_samples=tc.eval_samples, steps=tc.eval_steps,
                              confidence=cfg.evaluate.confidence, seed=cfg.seed)
    snapshots = SnapshotStore(paths.RESUME, keep=tc.keep_snapshots)
    result = train(cfg, split.images, labels=split.labels, snapshots=snapshots, probe=probe,
                   progress=progress_enabled())
    if not distributed_from_env().is_main:  # under torchrun only rank 0 writes
        return result.timing
    save_checkpoint(paths.CHECKPOINT, result.checkpoint)
    write_csv(paths.LOSS_CURVE, result.history, ["step", "loss", "lr"])
    write_csv(paths.TRAIN_EVAL, result.evals, ["step", "fid", "confident"])
    write_json(paths.TRAIN_METRICS, {"train": result.stats})
    snapshots.clear()
    last = f", FID {result.evals[-1]['fid']:.3f} at step {result.evals[-1]['step']}" if result.evals else ""
    log.info("trained %d steps in %.0f s (%.0f images/s; evaluation %.0f s), final loss %.4f%s", result.step,
             result.timing["train_s"], result.timing["images_per_s"], result.timing["eval_s"],
             result.stats["final_loss"], last)
    return result.timing


if __name__ == "__main__":
    run(train_stage)
