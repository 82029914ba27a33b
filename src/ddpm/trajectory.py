"""The denoising trajectory of the report's figure: q(x_t | x_0) at chosen t, and the sampler's x_t with its x̂_0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpm.config.groups import SampleConfig
from ddpm.data import to_model_input, to_uint8_images
from ddpm.diffusion import GaussianDiffusion, Model, ddim_timesteps


@dataclass
class ReverseTrajectory:
    """The sampler's run from noise, at the shown steps: the step's input x_t and its prediction x̂_0.

    `timesteps[j]` is the (0-based) timestep of column j; images are uint8 (N, columns, H, W, C).
    """

    timesteps: list[int]
    x_t: np.ndarray
    x0_hat: np.ndarray
    samples: np.ndarray  # what the sampler returns: uint8 (N, H, W, C)


class _LastOutput:
    """Wraps the network to keep its last output, from which the sampler's own x̂_0 is recomputed."""

    def __init__(self, model: Model):
        self.model, self.output = model, None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.output = self.model(x, t)
        return self.output


def sampler_steps(diffusion: GaussianDiffusion, cfg: SampleConfig) -> list[tuple[int, int]]:
    """(t, t_prev) of every step the configured sampler takes, as GaussianDiffusion.sample orders them."""
    if cfg.sampler == "ddpm":
        return [(t, t - 1) for t in range(diffusion.num_timesteps - 1, -1, -1)]
    ts = ddim_timesteps(diffusion.num_timesteps, cfg.steps)
    return list(zip(ts, ts[1:] + [-1]))


def shown(count: int, columns: int) -> list[int]:
    """`columns` indices spread evenly over range(count), first and last included."""
    return sorted({int(i) for i in np.linspace(0, count - 1, min(columns, count)).round()})


@torch.no_grad()
def reverse_trajectory(model: Model, diffusion: GaussianDiffusion, cfg: SampleConfig, shape: tuple[int, ...], *,
                       columns: int, generator: torch.Generator) -> ReverseTrajectory:
    """Run the configured sampler (cfg.sampler, steps, eta, variance, clip_denoised) from x_T ~ N(0, I).

    Draws from `generator` in the order GaussianDiffusion.sample does, so that the samples equal
    what `sample` returns for a generator with the same seed.
    """
    steps = sampler_steps(diffusion, cfg)
    keep = set(shown(len(steps), columns))
    net = _LastOutput(model)
    x = torch.randn(shape, generator=generator)
    previous, timesteps, x_t, x0_hat = None, [], [], []
    for i, (t, t_prev) in enumerate(steps):
        x_in = x
        if cfg.sampler == "ddpm":
            x = diffusion.p_sample(net, x, t, generator=generator, variance=cfg.variance,
                                   clip_denoised=cfg.clip_denoised)
        elif cfg.sampler == "ddim":
            x = diffusion.ddim_step(net, x, t, t_prev, eta=cfg.eta, generator=generator,
                                    clip_denoised=cfg.clip_denoised)
        else:
            x, previous = diffusion.dpmpp_2m_step(net, x, t, t_prev, previous=previous,
                                                  sde=cfg.sampler == "dpmpp_2m_sde", generator=generator,
                                                  clip_denoised=cfg.clip_denoised)
        if i in keep:
            tt = torch.full((shape[0],), t, dtype=torch.long)
            timesteps.append(t)
            x_t.append(to_uint8_images(x_in))
            x0_hat.append(to_uint8_images(diffusion.predict_x0_eps(net.output, x_in, tt, cfg.clip_denoised)[0]))
    return ReverseTrajectory(timesteps, np.stack(x_t, axis=1), np.stack(x0_hat, axis=1), to_uint8_images(x))


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
    """Indices of the first image of each of the first `n` classes: a row of different digits."""
    return np.unique(labels, return_index=True)[1][:n]
