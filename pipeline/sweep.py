"""Stage sweep: FID and speed against the sampler (each sampler at each step count, DDPM with all T steps);
for a class-conditional model, FID and conditional accuracy against the guidance weight w."""

import dataclasses
import time

from ddpm.checkpoints import load_ema_weights
from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.feature_spaces import extract
from ddpm.evaluation.scores import conditional_accuracy, fid_with_floor
from ddpm.io import write_csv, write_json
from ddpm.runtime import resolve_device
from ddpm.sampling import generate, sample_labels
from pipeline import paths
from pipeline.spaces import feature_space, load_reference
from pipeline.stage import log, progress_enabled, run

GUIDANCE_COLUMNS = ["guidance", "fid", "fid_floor", "accuracy", "space", "n_samples", "n_floor"]


def sweep(cfg: Config) -> dict:
    sw = cfg.sweep
    space = feature_space(cfg, sw.space)
    ref = load_reference(cfg, sw.space)
    device = resolve_device(cfg.runtime.device)
    ema, guide, trained = load_ema_weights(paths.CHECKPOINT, device)
    diffusion = GaussianDiffusion.from_config(trained)

    def draw(**settings):
        sample_cfg = dataclasses.replace(cfg.sample, num_samples=sw.num_samples, batch_size=sw.batch_size,
                                         seed=sw.seed, **settings)
        t0 = time.perf_counter()
        images = generate(ema, diffusion, sample_cfg, guide=guide, device=device, progress=progress_enabled())
        return sample_cfg, images, len(images) / (time.perf_counter() - t0)

    settings = [(sampler, steps) for sampler in sw.samplers for steps in sorted(set(sw.steps))]
    settings += [("ddpm", diffusion.num_timesteps)] if sw.ddpm else []
    rows, speed = [], {}
    for sampler, steps in settings:
        _, images, per_s = draw(sampler=sampler, steps=steps)
        feats = extract(space, images, device=str(device), batch_size=cfg.evaluate.batch_size)
        row = {"sampler": sampler, "steps": steps, "space": sw.space, **fid_with_floor(feats, ref, space.primary)}
        rows.append(row)
        speed[f"{sampler}_{steps}_samples_per_s"] = per_s  # wall clock: timing, not a metric
        log.info("%s %4d steps: FID %.3f (floor %.3f, %s, N=%d), %.1f samples/s", sampler, steps, row["fid"],
                 row["fid_floor"], sw.space, row["n_samples"], per_s)

    guided = []  # a conditional model: the fidelity/diversity trade-off of classifier-free guidance
    if ema.num_classes:
        domain = feature_space(cfg, "domain")  # conditional accuracy is the domain classifier's verdict
        classes = [str(c) for c in range(ema.num_classes)]  # the overall share needs labels, not names
        for w in sorted(set(sw.guidance)):
            sample_cfg, images, per_s = draw(guidance=w)
            feats = extract(space, images, device=str(device), batch_size=cfg.evaluate.batch_size)
            logits = (feats if sw.space == "domain" else
                      extract(domain, images, device=str(device), batch_size=cfg.evaluate.batch_size))["logits"]
            accuracy = conditional_accuracy(logits, sample_labels(sample_cfg, ema.num_classes), classes)
            row = {"guidance": w, **fid_with_floor(feats, ref, space.primary), "accuracy": accuracy["accuracy"],
                   "space": sw.space}
            guided.append({k: row[k] for k in GUIDANCE_COLUMNS})
            speed[f"guidance_{w:g}_samples_per_s"] = per_s
            log.info("guidance w = %g (%s, %d steps): FID %.3f (floor %.3f, %s, N=%d), conditional accuracy %.3f",
                     w, sample_cfg.sampler, sample_cfg.steps, row["fid"], row["fid_floor"], sw.space,
                     row["n_samples"], row["accuracy"])
    else:
        log.info("unconditional model: no guidance sweep (model.num_classes = 0)")
    write_csv(paths.SWEEP_TABLE, rows, list(rows[0]))
    write_csv(paths.GUIDANCE_TABLE, guided, GUIDANCE_COLUMNS)  # header only for an unconditional model
    write_json(paths.SWEEP_METRICS, {"sweep": {f"{r['sampler']}_{r['steps']}": r for r in rows},
                                     **({"guidance": {f"w_{r['guidance']:g}": r for r in guided}} if guided else {})})
    return speed


if __name__ == "__main__":
    run(sweep)
