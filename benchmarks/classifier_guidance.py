"""Classifier guidance (Dhariwal & Nichol 2021) beside classifier-free guidance: the share of samples the domain
classifier assigns to the digit asked for, and the domain FID, against the classifier scale s on the unconditional
model and against w on the class-conditional one; one JSON line per row, then a table.

Runs in a workspace where `dvc repro reference` has run (data/prepared, models/classifier.pt, data/reference) and
takes the generators as checkpoint files: `--uncond`, the `mnist-uncond` profile's models/checkpoint.pt, sampled
as that profile samples (autoguided, w = 2) with each scale of `--scales`; `--cond`, the default profile's, sampled
as the default does (autoguided, w = 1) with each classifier-free guidance weight of `--guidance`. Every row draws
`--samples` samples, the digits in turn, with `--steps` steps of the profile's sampler. The noisy classifier is
trained as the noisy_classifier stage trains it (the `mnist-uncond` profile's `noisy_classifier` group with `-S`
overrides), or read from `--noisy-classifier PATH` when that file exists (and written there after training).

    python -m benchmarks.classifier_guidance --workspace /tmp/cg --uncond /tmp/cg/models/checkpoint.pt \\
        --cond /tmp/default/models/checkpoint.pt --samples 500 --steps 20 --scales 0 1 2 4 8 16 --guidance 0 1
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from benchmarks import harness


def main() -> None:
    ap = harness.parser(__doc__, jsonl=Path("reports/classifier_guidance.jsonl"))
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("--uncond", type=Path, help="the mnist-uncond profile's checkpoint (classifier-guided rows)")
    ap.add_argument("--cond", type=Path, help="the default profile's checkpoint (classifier-free rows)")
    ap.add_argument("--noisy-classifier", type=Path, default=Path("reports/noisy_classifier.pt"))
    ap.add_argument("--scales", type=float, nargs="*", default=[0.0, 1.0, 2.0, 4.0, 8.0, 16.0])
    ap.add_argument("--guidance", type=float, nargs="*", default=[0.0, 1.0])
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--steps", type=int, default=20)
    harness.add_overrides(ap)
    args = ap.parse_args()
    harness.set_cpu_kernels()
    results = harness.Results(Path(__file__).stem, args)

    from ddpm.checkpoints import load_ema_weights
    from ddpm.data import load_split
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.evaluation.feature_spaces import domain_space, extract
    from ddpm.evaluation.scores import conditional_accuracy
    from ddpm.noisy_classifier import accuracy_at, report_timesteps, train_noisy_classifier
    from ddpm.noisy_classifier_io import load_noisy_classifier, save_noisy_classifier
    from ddpm.sampling import generate, sample_labels

    ws = args.workspace
    domain = domain_space(ws / "models/classifier.pt")
    classes = [str(c) for c in range(10)]

    def row(name: str, cfg, ema, guide, diffusion, classifier=None, **settings) -> dict:
        sample_cfg = dataclasses.replace(cfg.sample, num_samples=args.samples, steps=args.steps, **settings)
        t0 = time.perf_counter()
        images = generate(ema, diffusion, sample_cfg, guide=guide, classifier=classifier, progress=False)
        sample_s = time.perf_counter() - t0
        asked = sample_labels(dataclasses.replace(sample_cfg, classifier_scale=1.0), ema.num_classes, len(classes))
        logits = extract(domain, images, batch_size=50)["logits"]
        out = {"model": name, "classifier_scale": sample_cfg.classifier_scale, "guidance": sample_cfg.guidance,
               "autoguidance": sample_cfg.autoguidance, "sampler": sample_cfg.sampler, "steps": sample_cfg.steps,
               "n": len(images), "sample_s": sample_s,
               "accuracy": conditional_accuracy(logits, asked, classes)["accuracy"],
               "domain": harness.score(images, ws, cfg, "domain")}
        print(json.dumps(out), flush=True)
        results.add(**out)
        return out

    rows = []
    if args.uncond:
        cfg = harness.config("mnist-uncond", args.overrides)
        ema, guide, trained = load_ema_weights(args.uncond)
        diffusion = GaussianDiffusion.from_config(trained)
        if args.noisy_classifier.is_file():
            classifier = load_noisy_classifier(args.noisy_classifier, trained.diffusion)
        else:
            train, test = load_split(ws / "data/prepared/train"), load_split(ws / "data/prepared/test")
            t0 = time.perf_counter()
            fit = train_noisy_classifier(train.images, train.labels, cfg.noisy_classifier, diffusion, num_classes=10,
                                         seed=cfg.seed, progress=False)
            accuracy = accuracy_at(fit.model, diffusion, test.images, test.labels,
                                   report_timesteps(diffusion.num_timesteps), seed=cfg.seed)
            print(json.dumps({"noisy_classifier": dataclasses.asdict(cfg.noisy_classifier),
                              "train_s": time.perf_counter() - t0, "epoch_losses": fit.epoch_losses,
                              "accuracy": accuracy}), flush=True)
            save_noisy_classifier(args.noisy_classifier, fit.model, trained.diffusion, fit.epoch_losses)
            classifier = fit.model
        rows += [row("mnist-uncond", cfg, ema, guide, diffusion, classifier, classifier_scale=s) for s in args.scales]
    if args.cond:
        cfg = harness.config("default", args.overrides)
        ema, guide, trained = load_ema_weights(args.cond)
        rows += [row("default", cfg, ema, guide, GaussianDiffusion.from_config(trained), guidance=w)
                 for w in args.guidance]

    print(f"\n{args.samples} samples a row, {args.steps} steps; domain FID floor "
          f"{rows[0]['domain']['fid_floor']:.3f}" if rows else "no rows: give --uncond and/or --cond")
    print("| model | s | w (CFG) | autoguidance | asked digit | domain FID | sample s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['classifier_scale']:g} | {r['guidance']:g} | {r['autoguidance']:g} | "
              f"{100 * r['accuracy']:.1f}% | {r['domain']['fid']:.3f} | {r['sample_s']:.0f} |")


if __name__ == "__main__":
    main()
