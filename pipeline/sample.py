"""Stage sample: batch generation from the EMA weights -> samples.npz and a grid image."""

import time

from ddpm.checkpoints import load_ema_weights
from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.io import save_npz, write_json
from ddpm.report.grid import save_grid
from ddpm.runtime import resolve_device
from ddpm.sampling import generate, sample_labels
from pipeline import paths
from pipeline.stage import log, progress_enabled, run


def sample(cfg: Config) -> dict:
    device = resolve_device(cfg.runtime.device)
    ema, guide, trained = load_ema_weights(paths.CHECKPOINT, device)
    diffusion = GaussianDiffusion.from_config(trained)
    t0 = time.perf_counter()
    images = generate(ema, diffusion, cfg.sample, guide=guide, device=device, progress=progress_enabled())
    wall = time.perf_counter() - t0
    labels = sample_labels(cfg.sample, ema.num_classes)  # a conditional model's: sample i's class
    save_npz(paths.SAMPLES, images=images, **({} if labels is None else {"labels": labels}))
    save_grid(paths.SAMPLE_GRID, images[: cfg.sample.grid_size])
    steps = cfg.sample.steps
    write_json(paths.SAMPLE_METRICS, {"sample": {"n": len(images), "sampler": cfg.sample.sampler, "steps": steps}})
    log.info("%d samples (%s, %d steps) in %.1f s", len(images), cfg.sample.sampler, steps, wall)
    return {"samples_per_s": len(images) / wall}


if __name__ == "__main__":
    run(sample)
