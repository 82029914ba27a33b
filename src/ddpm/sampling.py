"""Batch generation: num_samples images from a trained U-Net (eps, v or x0 prediction) with the configured sampler."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm.data import to_uint8_images
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError
from ddpm.param_groups import SampleConfig
from ddpm.unet import UNet


@torch.no_grad()
def generate(model: UNet, diffusion: GaussianDiffusion, cfg: SampleConfig, *,
             device: torch.device | str = "cpu", progress: bool = True) -> np.ndarray:
    """cfg.num_samples images as uint8 NHWC, in batches, from one seeded generator."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    shape = (model.channels, model.image_size, model.image_size)
    out = []
    batches = math.ceil(cfg.num_samples / cfg.batch_size)
    for i in tqdm(range(batches), desc=f"sample ({cfg.sampler})", disable=not progress, dynamic_ncols=True):
        n = min(cfg.batch_size, cfg.num_samples - i * cfg.batch_size)
        x = diffusion.sample(model, (n, *shape), sampler=cfg.sampler, steps=cfg.steps, eta=cfg.eta,
                             variance=cfg.variance, clip_denoised=cfg.clip_denoised,
                             generator=generator, device=device)
        if not torch.isfinite(x).all():
            raise CheckpointError("the sampler produced NaN or inf: the checkpoint has diverged; "
                                  "retrain with a lower train.lr")
        out.append(to_uint8_images(x))
    return np.concatenate(out)
