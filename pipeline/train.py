"""Stage train: DDPM training -> models/checkpoint.pt, the loss curve and train metrics."""

import csv
import io

from ddpm.config import Config
from ddpm.data import load_split
from ddpm.io import write_json, write_text
from ddpm.train import distributed_from_env, save_checkpoint, train
from pipeline import paths
from pipeline.stage import log, progress_enabled, run


def train_stage(cfg: Config) -> None:
    data = load_split(paths.TRAIN_SPLIT)
    result = train(cfg, data.images, resume_path=paths.RESUME, progress=progress_enabled())
    if not distributed_from_env().is_main:  # under torchrun only rank 0 writes
        return
    save_checkpoint(paths.CHECKPOINT, result.checkpoint)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", "loss", "lr", "images_per_s"])
    writer.writeheader()
    writer.writerows(result.history)
    write_text(paths.LOSS_CURVE, buf.getvalue())
    write_json(paths.TRAIN_METRICS, {"train": result.stats})
    paths.RESUME.unlink(missing_ok=True)
    log.info("trained %d steps in %.0f s (%.0f images/s), final loss %.4f", result.step,
             result.stats["wall_s"], result.stats["images_per_s"], result.stats["final_loss"])


if __name__ == "__main__":
    run(train_stage)
