"""Stage sweep: FID and speed against the sampler (DDIM at each step count, DDPM with all T steps)."""

import csv
import dataclasses
import io
import time

from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation import fid_with_floor
from ddpm.feature_spaces import extract
from ddpm.io import write_json, write_text
from ddpm.sampling import generate
from ddpm.train import load_ema_model, resolve_device
from pipeline import paths
from pipeline.spaces import feature_space, load_reference
from pipeline.stage import log, progress_enabled, run


def sweep(cfg: Config) -> None:
    sw = cfg.sweep
    space = feature_space(cfg, sw.space)
    ref = load_reference(cfg, sw.space)
    device = resolve_device(cfg.train.device)
    model, trained = load_ema_model(paths.CHECKPOINT, device)
    diffusion = GaussianDiffusion.from_config(trained.diffusion)
    settings = [("ddim", min(s, diffusion.num_timesteps)) for s in sorted(set(sw.ddim_steps))]
    settings += [("ddpm", diffusion.num_timesteps)] if sw.ddpm else []
    rows = []
    for sampler, steps in settings:
        sample_cfg = dataclasses.replace(cfg.sample, num_samples=sw.num_samples, sampler=sampler, steps=steps,
                                         batch_size=sw.batch_size, seed=sw.seed)
        t0 = time.perf_counter()
        images = generate(model, diffusion, sample_cfg, device=device, progress=progress_enabled())
        wall = time.perf_counter() - t0
        feats = extract(space, images, device=str(device), batch_size=cfg.evaluate.batch_size)
        row = {"sampler": sampler, "steps": steps, "space": sw.space, **fid_with_floor(feats, ref, space.primary),
               "samples_per_s": len(images) / wall, "wall_s": wall}
        rows.append(row)
        log.info("%s %4d steps: FID %.3f (floor %.3f, %s, N=%d), %.1f samples/s", sampler, steps, row["fid"],
                 row["fid_floor"], sw.space, row["n_samples"], row["samples_per_s"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(paths.SWEEP_TABLE, buf.getvalue())
    write_json(paths.SWEEP_METRICS, {"sweep": {f"{r['sampler']}_{r['steps']}": r for r in rows}})


if __name__ == "__main__":
    run(sweep)
