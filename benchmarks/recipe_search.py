"""Training recipes side by side: train with parameter overrides, sample, score; one JSON line per run.

Runs in a workspace where `dvc repro reference` has run (prepared data, the domain classifier, the
reference features). Each run trains the default profile with the given overrides (no resume),
samples `--samples` images with each `--sampler NAME:STEPS[:ETA]` (autoguided as sample.autoguidance says,
as the sample stage does), and scores them as the evaluate stage does: domain FID against the held-out
split (with its floor), the share confidently classified, class shares; `--inception` adds inception FID
for the first sampler.

    PYTHONPATH=. python benchmarks/recipe_search.py --name min-snr -S train.min_snr_gamma=5 \\
        --sampler dpmpp_2m:20 --sampler ddim:50 --out reports/recipes.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import yaml

from ddpm.checkpoints import generator_from_state
from ddpm.config import Config, config_from_dict
from ddpm.data import load_split
from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.classifier import load_classifier
from ddpm.evaluation.feature_spaces import domain_space, extract, inception_space
from ddpm.evaluation.scores import Reference, coverage, evaluate_space
from ddpm.probe import TrainingProbe
from ddpm.runtime import resolve_device
from ddpm.sampling import generate
from ddpm.train import train


def with_overrides(overrides: list[str]) -> Config:
    params = Config().to_dict()
    for item in overrides:
        key, _, value = item.partition("=")
        *groups, leaf = key.split(".")
        node = params
        for g in groups:
            node = node[g]
        if leaf not in node:
            raise SystemExit(f"unknown parameter {key}")
        node[leaf] = yaml.safe_load(value)
    return config_from_dict(params)


def score(images: np.ndarray, workspace: Path, cfg: Config, space_name: str) -> dict:
    test = load_split(workspace / "data/prepared/test.npz")
    ref = Reference.load(workspace / f"data/reference/{space_name}.npz")
    space = domain_space(workspace / "models/classifier.pt") if space_name == "domain" else inception_space()
    t0 = time.perf_counter()
    feats = extract(space, images, batch_size=50)
    m = evaluate_space(feats, ref, space.primary, cfg.evaluate, seed=cfg.seed)
    out = {"fid": m["fid"], "fid_floor": m["floor"]["fid"], "precision": m["precision"], "recall": m["recall"],
           "extract_s": time.perf_counter() - t0}
    if space_name == "domain":
        cov = coverage(feats["logits"], test.labels, test.class_names, cfg.evaluate.confidence,
                       real_logits=ref.floor["logits"])
        shares = [v["samples"] for v in cov["per_class"].values()]
        out |= {"confident": cov["confident_share"], "confident_real": cov["confident_share_real"],
                "class_min": min(shares), "class_max": max(shares), "class_tv": cov["class_share_tv"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("--name", required=True)
    ap.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--sampler", action="append", default=[], metavar="NAME:STEPS[:ETA]")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--inception", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("reports/recipes.jsonl"))
    ap.add_argument("--save-samples", type=Path, help="folder for each run's samples (NAME-SAMPLER-STEPS.npz)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    cfg = with_overrides(args.overrides)
    split = load_split(args.workspace / "data/prepared/train.npz")
    probe = TrainingProbe(load_classifier(args.workspace / "models/classifier.pt"),
                          load_split(args.workspace / "data/prepared/test.npz").images,
                          num_samples=cfg.train.eval_samples, steps=cfg.train.eval_steps,
                          confidence=cfg.evaluate.confidence, seed=cfg.seed)
    result = train(cfg, split.images, labels=split.labels, probe=probe, progress=False)
    row = {"name": args.name, "overrides": args.overrides, "train": {**result.stats, **result.timing},
           "evals": result.evals, "samplers": {}}
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    device = resolve_device("cpu")
    generator, _ = generator_from_state(result.checkpoint, device, cfg.sample.autoguidance)  # as the sample stage
    for i, spec in enumerate(args.sampler or ["ddim:50"]):
        sampler, steps, eta = (spec.split(":") + ["50", "0"])[:3]
        sample_cfg = dataclasses.replace(cfg.sample, num_samples=args.samples, sampler=sampler, steps=int(steps),
                                         eta=float(eta))
        t0 = time.perf_counter()
        samples = generate(generator, diffusion, sample_cfg, device=device, progress=False)
        scores = {"sample_s": time.perf_counter() - t0, "domain": score(samples, args.workspace, cfg, "domain")}
        if args.save_samples:
            args.save_samples.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.save_samples / f"{args.name}-{spec.replace(':', '-')}.npz", images=samples)
        if args.inception and i == 0:
            scores["inception"] = score(samples, args.workspace, cfg, "inception")
        row["samplers"][spec] = scores
        logging.info("%s %s: %s", args.name, spec, json.dumps(scores))
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
