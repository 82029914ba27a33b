"""Stage sweep: FID and speed against the sampler (each sampler at each step count, DDPM with all T steps)."""

import dataclasses
import time

from ddpm.checkpoints import load_ema_model
from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation import fid_with_floor
from ddpm.feature_spaces import extract
from ddpm.io import write_csv, write_json
from ddpm.runtime import resolve_device
from ddpm.sampling import generate
from pipeline import paths
from pipeline.spaces import feature_space, load_reference
from pipeline.stage import log, progress_enabled, run


def sweep(cfg: Config) -> dict:
    sw = cfg.sweep
    space = feature_space(cfg, sw.space)
    ref = load_reference(cfg, sw.space)
    device = resolve_device(cfg.runtime.device)
    model, trained = load_ema_model(paths.CHECKPOINT, device)
    diffusion = GaussianDiffusion.from_config(trained.diffusion)
    settings = [(sampler, steps) for sampler in sw.samplers for steps in sorted(set(sw.steps))]
    settings += [("ddpm", diffusion.num_timesteps)] if sw.ddpm else []
    rows, speed = [], {}
    for sampler, steps in settings:
        sample_cfg = dataclasses.replace(cfg.sample, num_samples=sw.num_samples, sampler=sampler, steps=steps,
                                         batch_size=sw.batch_size, seed=sw.seed)
        t0 = time.perf_counter()
        images = generate(model, diffusion, sample_cfg, device=device, progress=progress_enabled())
        wall = time.perf_counter() - t0
        feats = extract(space, images, device=str(device), batch_size=cfg.evaluate.batch_size)
        row = {"sampler": sampler, "steps": steps, "space": sw.space, **fid_with_floor(feats, ref, space.primary)}
        rows.append(row)
        speed[f"{sampler}_{steps}_samples_per_s"] = len(images) / wall  # wall clock: timing, not a metric
        log.info("%s %4d steps: FID %.3f (floor %.3f, %s, N=%d), %.1f samples/s", sampler, steps, row["fid"],
                 row["fid_floor"], sw.space, row["n_samples"], len(images) / wall)
    write_csv(paths.SWEEP_TABLE, rows, list(rows[0]))
    write_json(paths.SWEEP_METRICS, {"sweep": {f"{r['sampler']}_{r['steps']}": r for r in rows}})
    return speed


if __name__ == "__main__":
    run(sweep)
