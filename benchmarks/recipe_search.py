"""Training recipes side by side: train with parameter overrides, sample, score; one JSON line per run.

Runs in a workspace where `dvc repro reference` has run (prepared data, the domain classifier, the
reference features). Each run trains the default profile with the given overrides (`-S`, checked as
`dvc exp run -S` takes them; no resume), samples `--samples` images with each `--sampler
NAME:STEPS[:ETA]` (autoguided as sample.autoguidance says, as the sample stage does), and scores them as
the evaluate stage does: domain FID against the held-out split (with its floor), the share confidently
classified, class shares; `--inception` adds inception FID for the first sampler, `--nll IMAGES:TERMS` the
NLL bound in bits/dim on the first IMAGES held-out images, as the evaluate stage computes it. The run's
JSON line goes to `--jsonl` (reports/recipes.jsonl unless told). `--save-checkpoint PATH` keeps the trained
state; `--checkpoint PATH` samples and scores one instead of training.

    python -m benchmarks.recipe_search --name min-snr -S train.min_snr_gamma=5 \\
        --sampler dpmpp_2m:20 --sampler ddim:50 --jsonl reports/recipes.jsonl
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from ddpm.checkpoints import ema_weights_from_state, load_checkpoint, save_checkpoint
from ddpm.data import load_split
from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.classifier import load_classifier
from ddpm.likelihood import dataset_bits_per_dim
from ddpm.probe import TrainingProbe
from ddpm.runtime import resolve_device
from ddpm.sampling import generate
from ddpm.train import train


def main() -> None:
    ap = harness.parser(__doc__, jsonl=Path("reports/recipes.jsonl"))
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("--name", required=True)
    harness.add_overrides(ap)
    ap.add_argument("--sampler", action="append", default=[], metavar="NAME:STEPS[:ETA]")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--inception", action="store_true")
    ap.add_argument("--save-samples", type=Path, help="folder for each run's samples (NAME-SAMPLER-STEPS.npz)")
    ap.add_argument("--nll", metavar="IMAGES:TERMS", help="bits/dim on IMAGES held-out images, TERMS KL terms each")
    ap.add_argument("--checkpoint", type=Path, help="score this checkpoint instead of training")
    ap.add_argument("--save-checkpoint", type=Path, help="write the trained checkpoint here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    cfg = harness.config("default", args.overrides)
    split = load_split(args.workspace / "data/prepared/train")
    probe = TrainingProbe(load_classifier(args.workspace / "models/classifier.pt"),
                          load_split(args.workspace / "data/prepared/test").images,
                          num_samples=cfg.train.eval_samples, steps=cfg.train.eval_steps,
                          confidence=cfg.evaluate.confidence, seed=cfg.seed)
    row = {"name": args.name, "overrides": args.overrides, "samplers": {}}
    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)
    else:
        result = train(cfg, split.images, labels=split.labels, probe=probe, progress=False)
        row |= {"train": {**result.stats, **result.timing}, "evals": result.evals}
        state = result.checkpoint
        if args.save_checkpoint:
            save_checkpoint(args.save_checkpoint, state)
    device = resolve_device("cpu")
    ema, guide, trained = ema_weights_from_state(state, device)  # as the sample stage
    diffusion = GaussianDiffusion.from_config(trained)
    if args.nll:
        images, terms = (int(v) for v in args.nll.split(":"))
        test = load_split(args.workspace / "data/prepared/test")
        t0 = time.perf_counter()
        row["nll"] = dataset_bits_per_dim(ema, diffusion, test.images[:images],
                                          test.labels[:images] if ema.num_classes else None, terms=terms,
                                          variance=cfg.sample.variance, clip_denoised=cfg.sample.clip_denoised,
                                          batch_size=cfg.evaluate.batch_size, seed=cfg.seed, device=device)
        row["nll"]["seconds"] = time.perf_counter() - t0
        logging.info("%s: %s", args.name, json.dumps(row["nll"]))
    for i, spec in enumerate(args.sampler or ["ddim:50"]):
        sampler, steps, eta = (spec.split(":") + ["50", "0"])[:3]
        sample_cfg = dataclasses.replace(cfg.sample, num_samples=args.samples, sampler=sampler, steps=int(steps),
                                         eta=float(eta))
        t0 = time.perf_counter()
        samples = generate(ema, diffusion, sample_cfg, guide=guide, device=device, progress=False)
        scores = {"sample_s": time.perf_counter() - t0, "domain": harness.score(samples, args.workspace, cfg, "domain")}
        if args.save_samples:
            args.save_samples.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.save_samples / f"{args.name}-{spec.replace(':', '-')}.npz", images=samples)
        if args.inception and i == 0:
            scores["inception"] = harness.score(samples, args.workspace, cfg, "inception")
        row["samplers"][spec] = scores
        logging.info("%s %s: %s", args.name, spec, json.dumps(scores))
    harness.Results(Path(__file__).stem, args).add(**row)


if __name__ == "__main__":
    main()
