"""Autoguidance (Karras et al. 2024) on the default run: the final EMA guided by the same run's EMA at an
earlier step, for a grid of guide steps and weights; one JSON line per point.

Trains the default profile once (with `-S` overrides, checked as `dvc exp run -S` takes them), keeping
the EMA weights every `--every` steps (a quality probe that samples nothing, so training is what `dvc
repro train` does), then samples `--samples` images per `GUIDE_STEP:W` point with the sample stage's
sampler and scores them as the evaluate stage does (benchmarks.harness.score, as recipe_search does).
W = 0 is the EMA alone. Runs in a workspace where `dvc repro reference` has run. Each point's JSON line
is printed and goes to `--jsonl` (reports/autoguidance.jsonl unless told).

    python -m benchmarks.autoguidance_grid --samples 500 2100:0 700:1 1050:1 700:2 350:2
    python -m benchmarks.autoguidance_grid --samples 1000 --inception 2100:0 700:2

Two more levers of the guided sampler:
- EMA lengths (EDM2's sigma_rel): `--ema-lengths 0.05 0.2` keeps power-function EMAs of these lengths
  beside the run's own, from the same training; a point `GUIDE_STEP:W:MAIN:GUIDE` samples the final EMA of
  length MAIN guided by the EMA of length GUIDE at GUIDE_STEP (`700:2:0.05:0.1`).
- Guidance in an interval (Kynkäänniemi et al. 2024, for classifier-free guidance): `--interval 200:900`
  guides only at the chain's steps 200 < t <= 900 and calls the final EMA alone elsewhere.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path
from unittest import mock

import torch
from torch.optim.swa_utils import AveragedModel

from benchmarks import harness
from ddpm.checkpoints import ema_weights_from_state
from ddpm.data import load_split
from ddpm.diffusion import GaussianDiffusion
from ddpm.ema import ema_beta, power_ema_gamma
from ddpm.guidance import guide
from ddpm.sampling import generate
from ddpm.train import train

Kept = dict[float, dict[int, dict[str, torch.Tensor]]]  # EMA length -> step -> EMA weights


def keeping_other_lengths(lengths: list[float], every: int, last: int, kept: Kept) -> type[AveragedModel]:
    """An AveragedModel for train() that also averages the weights with power-function EMAs of `lengths`,
    keeping each every `every` updates and at update `last`: train() itself keeps one EMA."""
    gammas = {s: power_ema_gamma(s) for s in lengths}

    class AlsoOtherLengths(AveragedModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.updates = 0
            self.averages: dict[float, list[torch.Tensor]] = {}

        def update_parameters(self, model: torch.nn.Module) -> None:
            super().update_parameters(model)
            self.updates += 1
            params = [p.detach() for p in model.parameters()]
            for s in lengths:  # (1 - 1/n)^(gamma + 1) is 0 at the first update: the average starts as a copy
                average = self.averages.setdefault(s, [p.clone() for p in params])
                torch._foreach_lerp_(average, params, 1.0 - ema_beta(self.updates, 0.0, gammas[s]))
            if self.updates % every == 0 or self.updates == last:
                names = [name for name, _ in model.named_parameters()]
                for s in lengths:
                    state = copy.deepcopy(self.module.state_dict())  # buffers as the run's EMA has them
                    state.update({name: p.clone() for name, p in zip(names, self.averages[s])})
                    kept.setdefault(s, {})[self.updates] = state

    return AlsoOtherLengths


class GuidedInInterval(torch.nn.Module):
    """The EMA autoguided by `guide_ema` at weight w only at chain steps lo < t <= hi, the EMA alone elsewhere.

    generate() samples it as an EMA without a guide (it reads the attributes a U-Net has)."""

    def __init__(self, ema: torch.nn.Module, guide_ema: torch.nn.Module, weight: float, lo: int, hi: int):
        super().__init__()
        self.ema, self.guide_ema, self.weight, self.lo, self.hi = ema, guide_ema, weight, lo, hi
        self.channels, self.image_size, self.num_classes = ema.channels, ema.image_size, ema.num_classes

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.lo < int(t[0]) <= self.hi:  # every sampler calls with one t for the whole batch
            return guide(self.ema(x_t, t, y), self.guide_ema(x_t, t, y), self.weight)
        return self.ema(x_t, t, y)


def chain_interval(text: str) -> tuple[int, int]:
    """`LO:HI` -> (LO, HI), read when the arguments are, so that a typo stops the script before any training."""
    lo, hi = (int(t) for t in text.split(":"))  # argparse reports the ValueError of a malformed value
    if not 0 <= lo < hi:
        raise argparse.ArgumentTypeError(f"{text}: need 0 <= LO < HI")
    return lo, hi


def main() -> None:
    ap = harness.parser(__doc__, jsonl=Path("reports/autoguidance.jsonl"))
    ap.add_argument("points", nargs="+", metavar="GUIDE_STEP:W[:MAIN:GUIDE]")
    ap.add_argument("--workspace", type=Path, default=Path("."))
    harness.add_overrides(ap)
    ap.add_argument("--every", type=int, default=350, help="keep the EMA weights every this many steps")
    ap.add_argument("--ema-lengths", type=float, nargs="+", default=[], metavar="SIGMA_REL",
                    help="also keep power-function EMAs of these relative lengths")
    ap.add_argument("--interval", type=chain_interval, metavar="LO:HI", help="guide only at chain steps LO < t <= HI")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--inception", action="store_true")
    ap.add_argument("--cache", type=Path, default=Path("reports/autoguidance_emas.pt"),
                    help="the kept EMA weights; reused when present (delete it after changing -S, --every or "
                         "--ema-lengths)")
    args = ap.parse_args()
    results = harness.Results(Path(__file__).stem, args)

    cfg = harness.config("default", ["train.precision=fp32", f"train.eval_every={args.every}", *args.overrides])
    own = cfg.train.ema_sigma_rel
    if not args.cache.exists():
        kept: Kept = {own: {}}

        def keep_ema(model, diffusion, device) -> dict[str, float]:
            kept[own][min(args.every * (len(kept[own]) + 1), cfg.train.steps)] = copy.deepcopy(model.state_dict())
            return {"fid": float("nan"), "confident": float("nan")}

        split = load_split(args.workspace / "data/prepared/train")
        averaging = keeping_other_lengths(args.ema_lengths, args.every, cfg.train.steps, kept)
        with mock.patch("ddpm.train.AveragedModel", averaging):
            result = train(cfg, split.images, labels=split.labels, probe=keep_ema, progress=False)
        print(json.dumps({"train": result.timing, "kept": {str(s): sorted(k) for s, k in kept.items()}}), flush=True)
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(kept, args.cache)
    kept = torch.load(args.cache, weights_only=True)
    if any(not isinstance(step, int) for steps in kept.values() for step in steps):
        raise SystemExit(f"{args.cache} was written by an older version of this script: delete it and rerun")

    points = []  # (guide step, w, final EMA's length, guide's length), all checked before any sampling
    for point in args.points:
        guide_step, weight, *lengths = point.split(":")
        main_length, guide_length = (float(s) for s in lengths) if lengths else (own, own)
        points.append((int(guide_step), float(weight), main_length, guide_length))
        for length, step in ((main_length, cfg.train.steps), (guide_length, int(guide_step))):
            if step not in kept.get(length, {}):
                raise SystemExit(f"no EMA of length {length} kept at step {step}: kept "
                                 f"{ {s: sorted(k) for s, k in kept.items()} }")

    diffusion = GaussianDiffusion.from_config(cfg)
    for guide_step, weight, main_length, guide_length in points:
        # as the sample stage builds its generator from a checkpoint: the final EMA, guided by the kept one
        state = {"config": cfg.training_dict(), "ema": kept[main_length][cfg.train.steps],
                 "guide": kept[guide_length][guide_step]}
        ema, guide_ema, _ = ema_weights_from_state(state, "cpu")
        sample_cfg = dataclasses.replace(cfg.sample, num_samples=args.samples, autoguidance=weight)
        if args.interval and weight:  # the guidance inside the model: generate() sees an EMA alone
            ema, guide_ema = GuidedInInterval(ema, guide_ema, weight, *args.interval), None
            sample_cfg = dataclasses.replace(sample_cfg, autoguidance=0.0)
        t0 = time.perf_counter()
        samples = generate(ema, diffusion, sample_cfg, guide=guide_ema, progress=False)
        row = {"guide_step": guide_step, "w": weight, "ema_lengths": [main_length, guide_length],
               "interval": args.interval, "sampler": sample_cfg.sampler, "steps": sample_cfg.steps,
               "n": args.samples, "sample_s": time.perf_counter() - t0,
               "domain": harness.score(samples, args.workspace, cfg, "domain")}
        if args.inception:
            row["inception"] = harness.score(samples, args.workspace, cfg, "inception")
        print(json.dumps(row), flush=True)
        results.add(**row)


if __name__ == "__main__":
    main()
