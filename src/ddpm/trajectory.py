"""The denoising trajectory of the report's figure: q(x_t | x_0) at chosen t, and the sampler's x_t with its x̂_0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpm.config.groups import SampleConfig
from ddpm.data import to_model_input, to_uint8_images
from ddpm.diffusion import GaussianDiffusion, Model
from ddpm.samplers import sample_loop_progressive, timestep_pairs


@dataclass
class ReverseTrajectory:
    """The sampler's run from noise, at the shown steps: the step's input x_t and its prediction x̂_0.

    `timesteps[j]` is the (0-based) timestep of column j; images are uint8 (N, columns, H, W, C).
    """

    timesteps: list[int]
    x_t: np.ndarray
    x0_hat: np.ndarray
    samples: np.ndarray  # what the sampler returns: uint8 (N, H, W, C)


def shown(count: int, columns: int) -> list[int]:
    """`columns` indices spread evenly over range(count), first and last included."""
    return sorted({int(i) for i in np.linspace(0, count - 1, min(columns, count)).round()})


def reverse_trajectory(model: Model, diffusion: GaussianDiffusion, cfg: SampleConfig, shape: tuple[int, ...], *,
                       columns: int, generator: torch.Generator) -> ReverseTrajectory:
    """The configured sampler's run (cfg.sampler, steps, eta, variance, clip_denoised) from x_T ~ N(0, I), at
    `columns` of its steps: the steps of ddpm.samplers.sample_loop_progressive, so the samples are what
    `sample` returns for a generator with the same seed."""
    run = sample_loop_progressive(model, diffusion, shape, sampler=cfg.sampler, steps=cfg.steps, eta=cfg.eta,
                                  variance=cfg.variance, clip_denoised=cfg.clip_denoised, generator=generator)
    keep = set(shown(len(timestep_pairs(diffusion.num_timesteps, cfg.sampler, cfg.steps)), columns))
    timesteps, x_t, x0_hat = [], [], []
    for i, step in enumerate(run):
        if i in keep:
            timesteps.append(step.t)
            x_t.append(to_uint8_images(step.x_t))
            x0_hat.append(to_uint8_images(step.x0_hat))
    return ReverseTrajectory(timesteps, np.stack(x_t, axis=1), np.stack(x0_hat, axis=1), to_uint8_images(step.sample))


@torch.no_grad()
def forward_trajectory(diffusion: GaussianDiffusion, images: np.ndarray, timesteps: list[int], *,
                       generator: torch.Generator) -> np.ndarray:
    """x_t ~ q(x_t | x_0) of uint8 NHWC `images` at each of `timesteps`: uint8 (N, len(timesteps), H, W, C).

    One noise draw per image, shared by all t, so that a row shows the same path growing noisier.
    """
    x0 = to_model_input(torch.from_numpy(images))
    noise = torch.randn(x0.shape, generator=generator)
    return np.stack([to_uint8_images(diffusion.q_sample(x0, torch.full((len(x0),), t), noise)) for t in timesteps],
                    axis=1)


def one_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first image of each of the first `n` classes: a row of different classes."""
    return np.unique(labels, return_index=True)[1][:n]
