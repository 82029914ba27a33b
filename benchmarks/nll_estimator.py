"""The NLL estimator against the full sum: how far the stratified estimate of the KL terms strays from all T - 1.

On the first `--images` held-out images of a workspace where `dvc repro prepare` has run, the bound of a
checkpoint's EMA weights with every KL term (T network calls an image), then `--repeats` stratified estimates
with each of `--terms` K on the same images, each repeat with its own seed. Per K: the estimator's standard
deviation per image (its noise, beside the images' own spread in the full sum), its mean error against the
full sum over all repeats and images (the bias, expected 0), and the seconds an image costs.

    python -m benchmarks.nll_estimator --checkpoint models/checkpoint.pt --images 20 --terms 10 25 50 100
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from benchmarks import harness
from ddpm.checkpoints import load_ema_weights
from ddpm.config import load_config
from ddpm.data import load_split, to_model_input
from ddpm.diffusion import GaussianDiffusion
from ddpm.likelihood import bits_per_dim


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("--checkpoint", type=Path, default=Path("models/checkpoint.pt"))
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--terms", type=int, nargs="+", default=[10, 25, 50, 100])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = harness.Results("nll_estimator", args)

    cfg = load_config(args.workspace / "params.yaml")
    ema, _, trained = load_ema_weights(args.checkpoint)
    diffusion = GaussianDiffusion.from_config(trained)
    test = load_split(args.workspace / "data/prepared/test")
    x0 = to_model_input(torch.from_numpy(test.images[:args.images]))
    labels = torch.from_numpy(test.labels[:args.images]) if ema.num_classes else None
    model = ema if labels is None else (lambda x_t, t: ema(x_t, t, labels))
    settings = {"variance": cfg.sample.variance, "clip_denoised": cfg.sample.clip_denoised}

    def bound(terms, seed):
        t0 = time.perf_counter()
        out = bits_per_dim(model, diffusion, x0, terms=terms, generator=torch.Generator().manual_seed(seed), **settings)
        return out["total"], (time.perf_counter() - t0) / args.images

    full, full_s = bound(None, 0)
    print(f"full sum: {full.mean():.4f} bits/dim over {args.images} images (spread between images "
          f"{full.std():.4f}), {full_s:.2f} s an image")
    results.add(terms="all", bits_per_dim=full.mean().item(), image_spread=full.std().item(), seconds_per_image=full_s)
    print("| K | mean estimate | estimator std per image | mean error vs full (± se) | s / image |")
    print("|---|---|---|---|---|")
    for terms in args.terms:
        runs = [bound(terms, 1 + r) for r in range(args.repeats)]
        estimates = torch.stack([total for total, _ in runs])  # (repeats, images)
        noise = (estimates - estimates.mean(0)).square().sum(0).div(args.repeats - 1).mean().sqrt().item()
        error = estimates - full  # the full sum has its own noise (one x_t per term): both go in here
        se = error.std().item() / error.numel() ** 0.5
        seconds = sum(s for _, s in runs) / args.repeats
        print(f"| {terms} | {estimates.mean():.4f} | {noise:.4f} | {error.mean():+.4f} ± {se:.4f} | {seconds:.2f} |")
        results.add(terms=terms, bits_per_dim=estimates.mean().item(), estimator_std=noise,
                    error=error.mean().item(), error_se=se, seconds_per_image=seconds)


if __name__ == "__main__":
    main()
