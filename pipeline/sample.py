"""Stage sample: batch generation from the EMA weights -> samples.npz and a grid image; with
sample.classifier_scale > 0, guided by the noisy_classifier stage's classifier. `torchrun -m pipeline.sample`
splits the batches over the processes and writes the bytes one process writes."""

import time

from ddpm.checkpoints import load_ema_weights
from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.io import save_npz, write_json
from ddpm.noisy_classifier_io import load_noisy_classifier
from ddpm.report.grid import save_grid
from ddpm.runtime import distributed_from_env, init_distributed, resolve_device
from ddpm.sampling import generate, sample_labels
from pipeline import paths
from pipeline.stage import log, progress_enabled, run


def sample(cfg: Config) -> dict:
    processes = distributed_from_env()  # under torchrun each rank draws its share; rank 0 writes
    device = init_distributed(processes, resolve_device(cfg.runtime.device))
    ema, guide, trained = load_ema_weights(paths.CHECKPOINT, device)
    diffusion = GaussianDiffusion.from_config(trained)
    classifier = (load_noisy_classifier(paths.NOISY_CLASSIFIER, trained.diffusion, device)
                  if cfg.sample.classifier_scale else None)
    labels = sample_labels(cfg.sample, ema.num_classes,  # sample i's class: the model's or the classifier's
                           classifier.num_classes if classifier is not None else None)
    t0 = time.perf_counter()
    images = generate(ema, diffusion, cfg.sample, guide=guide, classifier=classifier, device=device,
                      progress=progress_enabled() and processes.is_main, processes=processes)
    wall = time.perf_counter() - t0
    if not processes.is_main:
        return {}
    save_npz(paths.SAMPLES, images=images, **({} if labels is None else {"labels": labels}))
    save_grid(paths.SAMPLE_GRID, images[: cfg.sample.grid_size])
    steps = cfg.sample.steps
    guided = {"classifier_scale": cfg.sample.classifier_scale} if cfg.sample.classifier_scale else {}
    write_json(paths.SAMPLE_METRICS, {"sample": {"n": len(images), "sampler": cfg.sample.sampler, "steps": steps,
                                                 **guided}})
    log.info("%d samples (%s, %d steps) in %.1f s", len(images), cfg.sample.sampler, steps, wall)
    return {"samples_per_s": len(images) / wall}


if __name__ == "__main__":
    run(sample)
