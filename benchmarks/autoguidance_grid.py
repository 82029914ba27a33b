"""Autoguidance (Karras et al. 2024) on the default run: the final EMA guided by the same run's EMA at an
earlier step, for a grid of guide steps and weights; one JSON line per point.

Trains the default profile once (with overrides), keeping the EMA weights every `--every` steps (a
quality probe that samples nothing, so training is what `dvc repro train` does), then samples `--samples`
images per `GUIDE_STEP:W` point with the sample stage's sampler and scores them as recipe_search.py does.
W = 0 is the EMA alone. Runs in a workspace where `dvc repro reference` has run.

    PYTHONPATH=. python benchmarks/autoguidance_grid.py --samples 500 2100:0 700:1 1050:1 700:2 350:2
    PYTHONPATH=. python benchmarks/autoguidance_grid.py --samples 1000 --inception 2100:0 700:2
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from benchmarks.recipe_search import score, with_overrides
from ddpm.checkpoints import generator_from_state
from ddpm.data import load_split
from ddpm.diffusion import GaussianDiffusion
from ddpm.sampling import generate
from ddpm.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("points", nargs="+", metavar="GUIDE_STEP:W")
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--every", type=int, default=350, help="keep the EMA weights every this many steps")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--inception", action="store_true")
    ap.add_argument("--cache", type=Path, default=Path("reports/autoguidance_emas.pt"),
                    help="the kept EMA weights; reused when present (delete it after changing -S or --every)")
    ap.add_argument("--out", type=Path, default=Path("reports/autoguidance.jsonl"))
    args = ap.parse_args()

    cfg = with_overrides(["train.precision=fp32", f"train.eval_every={args.every}", *args.overrides])
    if not args.cache.exists():
        emas: dict[int, dict] = {}

        def keep_ema(model, diffusion, device) -> dict[str, float]:
            emas[min(args.every * (len(emas) + 1), cfg.train.steps)] = copy.deepcopy(model.state_dict())
            return {"fid": float("nan"), "confident": float("nan")}

        images = load_split(args.workspace / "data/prepared/train.npz").images
        result = train(cfg, images, probe=keep_ema, progress=False)
        print(json.dumps({"train": result.timing, "kept": sorted(emas)}), flush=True)
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(emas, args.cache)
    emas = torch.load(args.cache, weights_only=True)

    missing = sorted({int(p.split(":")[0]) for p in args.points} - set(emas))
    if cfg.train.steps not in emas or missing:
        raise SystemExit(f"no EMA kept at step {missing or cfg.train.steps}: choose from {sorted(emas)}")
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    for point in args.points:
        guide_step, weight = int(point.split(":")[0]), float(point.split(":")[1])
        # as the sample stage builds its generator from a checkpoint: the final EMA, guided by the kept one
        state = {"config": cfg.training_dict(), "ema": emas[cfg.train.steps], "guide": emas[guide_step]}
        model, _ = generator_from_state(state, "cpu", weight)
        sample_cfg = dataclasses.replace(cfg.sample, num_samples=args.samples, autoguidance=weight)
        t0 = time.perf_counter()
        samples = generate(model, diffusion, sample_cfg, progress=False)
        row = {"guide_step": guide_step, "w": weight, "n": args.samples, "sample_s": time.perf_counter() - t0,
               "domain": score(samples, args.workspace, cfg, "domain")}
        if args.inception:
            row["inception"] = score(samples, args.workspace, cfg, "inception")
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
