"""Stage sweep: FID and speed against the sampler (each sampler at each step count, DDPM with all T steps);
for a class-conditional model, FID and conditional accuracy against the guidance weight w, and for any model
against the classifier guidance scale s (sweep.classifier_scales: the noisy_classifier stage's classifier)."""

import dataclasses
import time

from ddpm.checkpoints import load_ema_weights
from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.feature_spaces import extract
from ddpm.evaluation.scores import conditional_accuracy, fid_with_floor
from ddpm.io import write_csv, write_json
from ddpm.noisy_classifier_io import load_noisy_classifier
from ddpm.runtime import resolve_device
from ddpm.sampling import generate, sample_labels
from pipeline import paths
from pipeline.spaces import feature_space, load_reference
from pipeline.stage import log, progress_enabled, run

GUIDANCE_COLUMNS = ["guidance", "classifier_scale", "fid", "fid_floor", "accuracy", "space", "n_samples", "n_floor"]


def sweep(cfg: Config) -> dict:
    sw = cfg.sweep
    space = feature_space(cfg, sw.space)
    ref = load_reference(cfg, sw.space)
    device = resolve_device(cfg.runtime.device)
    ema, guide, trained = load_ema_weights(paths.CHECKPOINT, device)
    diffusion = GaussianDiffusion.from_config(trained)
    scales = sorted(set(sw.classifier_scales))
    classifier = (load_noisy_classifier(paths.NOISY_CLASSIFIER, trained.diffusion, device)
                  if cfg.sample.classifier_scale or scales else None)

    def draw(**settings):
        sample_cfg = dataclasses.replace(cfg.sample, num_samples=sw.num_samples, batch_size=sw.batch_size,
                                         seed=sw.seed, **settings)
        t0 = time.perf_counter()
        images = generate(ema, diffusion, sample_cfg, guide=guide, classifier=classifier, device=device,
                          progress=progress_enabled())
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

    guided, steered = [], []  # the fidelity/diversity trade-off of classifier-free and of classifier guidance
    classes = [str(c) for c in range(ema.num_classes or (classifier.num_classes if classifier else 0))]

    def guided_row(**settings):
        sample_cfg, images, per_s = draw(**settings)
        feats = extract(space, images, device=str(device), batch_size=cfg.evaluate.batch_size)
        logits = (feats if sw.space == "domain" else  # conditional accuracy is the domain classifier's verdict
                  extract(feature_space(cfg, "domain"), images, device=str(device),
                          batch_size=cfg.evaluate.batch_size))["logits"]
        # the labels asked for; an unconditional model's s = 0 row (drawn unlabelled) against those the others ask
        asked = sample_cfg if ema.num_classes else dataclasses.replace(sample_cfg, classes=cfg.sample.classes,
                                                                       classifier_scale=1.0)
        labels = sample_labels(asked, ema.num_classes, len(classes))  # the overall share needs labels
        row = {"guidance": sample_cfg.guidance, "classifier_scale": sample_cfg.classifier_scale,
               **fid_with_floor(feats, ref, space.primary), "space": sw.space,
               "accuracy": conditional_accuracy(logits, labels, classes)["accuracy"]}
        log.info("guidance w = %g, classifier scale s = %g (%s, %d steps): FID %.3f (floor %.3f, %s, N=%d), "
                 "conditional accuracy %.3f", row["guidance"], row["classifier_scale"], sample_cfg.sampler,
                 sample_cfg.steps, row["fid"], row["fid_floor"], sw.space, row["n_samples"], row["accuracy"])
        return {k: row[k] for k in GUIDANCE_COLUMNS}, per_s

    if ema.num_classes:
        for w in sorted(set(sw.guidance)):
            row, speed[f"guidance_{w:g}_samples_per_s"] = guided_row(guidance=w)
            guided.append(row)
    else:
        log.info("unconditional model: no classifier-free guidance sweep (model.num_classes = 0)")
    for s in scales:
        unlabelled = {} if s or ema.num_classes else {"classes": None}  # unguided, unconditional: no labels
        row, speed[f"classifier_scale_{s:g}_samples_per_s"] = guided_row(classifier_scale=s, **unlabelled)
        steered.append(row)
    write_csv(paths.SWEEP_TABLE, rows, list(rows[0]))
    write_csv(paths.GUIDANCE_TABLE, guided + steered, GUIDANCE_COLUMNS)  # header only when neither is swept
    write_json(paths.SWEEP_METRICS, {"sweep": {f"{r['sampler']}_{r['steps']}": r for r in rows},
                                     **({"guidance": {f"w_{r['guidance']:g}": r for r in guided}} if guided else {}),
                                     **({"classifier_guidance": {f"s_{r['classifier_scale']:g}": r for r in steered}}
                                        if steered else {})})
    return speed


if __name__ == "__main__":
    run(sweep)
