"""The samplers: DDPM ancestral (Ho et al. 2020; on a respaced chain, Nichol & Dhariwal 2021), DDIM (Song et al.
2020), DPM-Solver++(2M) and its SDE variant (Lu et al. 2022), as steps on a GaussianDiffusion and the one loop
that runs them; each takes classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2) as `cond_fn`.

Every step takes the diffusion Model it calls, (x_t, t) -> prediction, as its first argument (which network
that is, guided or not, is ddpm.guidance.sampler_model's business) and returns the next sample with the x0_hat
it moved towards. `sample_loop_progressive` yields each step, as improved-diffusion's
`p_sample_loop_progressive`; `sample` is its last sample. Index t runs 0..T-1, as in ddpm.diffusion.

`cond_fn(x_t, t)` is s grad_x log p(y | x_t, t) of a noise-aware classifier at scale s (ddpm.classifier_guidance):
DDPM shifts its mean by Sigma cond_fn, the others their eps by -sqrt(1 - abar_t) cond_fn (the score form).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ddpm.diffusion import GaussianDiffusion, Model, Variance, extract

Sampler = Literal["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde"]
CondFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> s grad log p(y | x_t, t)


# ---------------------------------------------------------------------------- sampling timesteps
def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """The DDIM sub-sequence tau, descending: `steps` evenly spaced timesteps starting at 0.

    As in Song et al.'s code (t = 0, c, 2c, ...), the last index T - 1 is not visited when
    steps < T: with the cosine schedule abar_{T-1} is ~0, and predicting x_0 there would
    amplify the model's error by 1 / sqrt(abar_{T-1}).
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"{steps} sampling steps on a {timesteps}-step chain: use 1 to {timesteps}")
    return sorted({int(i * timesteps // steps) for i in range(steps)}, reverse=True)


def timestep_pairs(timesteps: int, sampler: Sampler, steps: int | None) -> list[tuple[int, int]]:
    """(t, t_prev) of every step `sampler` takes on a `timesteps`-step chain; t_prev = -1 is the step to x_0.

    Every sampler visits the `steps` of ddim_timesteps (all T when steps is None); DDPM's steps below T are
    those of the chain respaced to them.
    """
    ts = ddim_timesteps(timesteps, steps or timesteps)
    return list(zip(ts, ts[1:] + [-1]))


# ---------------------------------------------------------------------------- one step each
def _batch_of(t: int, x_t: torch.Tensor) -> torch.Tensor:
    """The timestep t for every image of x_t, as the network takes it."""
    return torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)


class PerSampleGenerators:
    """One generator for each image, seeded by the image's index in the whole set: an image's random numbers do
    not depend on the batch it is drawn in, so any batching, and any split over processes, gives the same images."""

    def __init__(self, seed: int, indices: range, device: torch.device | str = "cpu"):
        self.generators = [torch.Generator(device=device).manual_seed(sample_seed(seed, i)) for i in indices]

    def randn(self, shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"a batch of {shape[0]} images drawn with generators for {len(self.generators)}")
        return torch.stack([torch.randn(shape[1:], generator=g, device=device, dtype=dtype) for g in self.generators])


def sample_seed(seed: int, index: int) -> int:
    """Image `index`'s seed: a hash of (seed, index), so neighbouring images get unrelated streams."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


Generators = torch.Generator | PerSampleGenerators | None


def draw_noise(shape: tuple[int, ...], generator: Generators, device: torch.device | str,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if isinstance(generator, PerSampleGenerators):
        return generator.randn(shape, device, dtype)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _noise_like(x_t: torch.Tensor, generator: Generators) -> torch.Tensor:
    return draw_noise(x_t.shape, generator, x_t.device, x_t.dtype)


def _score_guided(diffusion: GaussianDiffusion, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                  cond_fn: CondFn | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(x0_hat, eps_hat) of eps - sqrt(1 - abar_t) cond_fn (Algorithm 2), or None without guidance; x0_hat is
    not clipped again, as in guided-diffusion's condition_score."""
    if cond_fn is None:
        return None
    eps = eps - extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x_t) * cond_fn(x_t, t)
    return diffusion.predict_x0_from_eps(x_t, t, eps), eps


def ddpm_step(
    model: Model, diffusion: GaussianDiffusion, x_t: torch.Tensor, t: int, *, variance: Variance = "beta",
    clip_denoised: bool = True, generator: Generators = None, cond_fn: CondFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step x_t -> x_{t-1} = mu_theta + sigma_t z (no noise at t = 0), and its x0_hat; guided,
    the mean is mu_theta + Sigma cond_fn (Algorithm 1)."""
    tt = _batch_of(t, x_t)
    mean, log_var, x0 = diffusion.p_mean_variance(model(x_t, tt), x_t, tt, variance=variance,
                                                  clip_denoised=clip_denoised)
    if cond_fn is not None:
        mean = mean + torch.exp(log_var) * cond_fn(x_t, tt)
    if t == 0:
        return mean, x0
    return mean + torch.exp(0.5 * log_var) * _noise_like(x_t, generator), x0


def ddim_step(
    model: Model, diffusion: GaussianDiffusion, x_t: torch.Tensor, t: int, t_prev: int, *, eta: float = 0.0,
    clip_denoised: bool = True, generator: Generators = None, cond_fn: CondFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z, and x0_hat.

    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev); t_prev = -1
    means the final step to x_0 (abar_prev = 1).
    """
    tt = _batch_of(t, x_t)
    x0, eps = diffusion.predict_x0_eps(model(x_t, tt), x_t, tt, clip_denoised)
    x0, eps = _score_guided(diffusion, x_t, tt, eps, cond_fn) or (x0, eps)
    abar_t = diffusion.alphas_cumprod[t].item()
    abar_prev = diffusion.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar_t)) * math.sqrt(1 - abar_t / abar_prev)
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
    if sigma > 0:  # eta = 0 draws nothing, so that DDIM leaves the generator as it found it
        x_prev = x_prev + sigma * _noise_like(x_t, generator)
    return x_prev, x0


def dpmpp_2m_step(
    model: Model, diffusion: GaussianDiffusion, x_t: torch.Tensor, t: int, t_prev: int, *,
    previous: tuple[torch.Tensor, int] | None = None, sde: bool = False, clip_denoised: bool = True,
    generator: Generators = None, cond_fn: CondFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DPM-Solver++(2M) step x_t -> x_{t_prev} (Lu et al. 2022, Algorithm 2), or with `sde` one
    step of SDE-DPM-Solver++(2M) (the same paper, sec. 5; diffusers' "sde-dpmsolver++", midpoint), and x0_hat.

    With alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma) and
    h = lambda_prev - lambda_t:

        x_prev = (sigma_prev / sigma_t) x_t - alpha_prev (e^-h - 1) D                 ODE
        x_prev = (sigma_prev / sigma_t) e^-h x_t - alpha_prev (e^-2h - 1) D
                 + sigma_prev sqrt(1 - e^-2h) z,  z ~ N(0, I)                         SDE
        D = x0_hat                                     first order (ODE: DDIM with eta = 0; SDE: eta = 1)
        D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_before  second order, r = h_before / h

    `previous` is (x0_hat, t) of the step before, or None. The first step is first order, and so
    are the last two, as diffusers' `lower_order_final` does: the step to t_prev = -1 (abar = 1,
    lambda infinite) ends at the data prediction, and the step into t_prev = 0 (1 - abar_0 ~ 4e-5)
    is the long final jump in lambda, where extrapolating x0_hat linearly in lambda overshoots (on
    Gaussian data: 6x the first-order error at 10 steps).
    """
    tt = _batch_of(t, x_t)
    x0, eps = diffusion.predict_x0_eps(model(x_t, tt), x_t, tt, clip_denoised)
    x0, _ = _score_guided(diffusion, x_t, tt, eps, cond_fn) or (x0, eps)
    if t_prev < 0:
        return x0, x0
    lam_t, lam_prev = diffusion.half_log_snr(t), diffusion.half_log_snr(t_prev)
    h = lam_prev - lam_t
    data = x0
    if previous is not None and t_prev > 0:
        x0_before, t_before = previous
        r = (lam_t - diffusion.half_log_snr(t_before)) / h
        data = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_before
    abar_t, abar_prev = diffusion.alphas_cumprod[t].item(), diffusion.alphas_cumprod[t_prev].item()
    sigma_ratio = math.sqrt((1 - abar_prev) / (1 - abar_t))
    if not sde:
        return sigma_ratio * x_t - math.sqrt(abar_prev) * math.expm1(-h) * data, x0
    z = _noise_like(x_t, generator)
    x_prev = (sigma_ratio * math.exp(-h) * x_t - math.sqrt(abar_prev) * math.expm1(-2 * h) * data
              + math.sqrt((1 - abar_prev) * -math.expm1(-2 * h)) * z)
    return x_prev, x0


# ---------------------------------------------------------------------------- the loop
@dataclass
class SamplerStep:
    """One step of a sampler's run: at timestep t it saw x_t, predicted x0_hat and moved to `sample`
    (x_{t_prev}; after the last step, the sampler's x_0)."""

    t: int
    x_t: torch.Tensor
    x0_hat: torch.Tensor
    sample: torch.Tensor


def sample_loop_progressive(
    model: Model, diffusion: GaussianDiffusion, shape: tuple[int, ...], *, sampler: Sampler,
    steps: int | None = None, eta: float = 0.0, variance: Variance = "beta", clip_denoised: bool = True,
    generator: Generators = None, device: torch.device | str = "cpu", noise: torch.Tensor | None = None,
    cond_fn: CondFn | None = None,
) -> Iterator[SamplerStep]:
    """Run `sampler` from x_T = `noise`, or x_T ~ N(0, I) drawn from `generator`, yielding every step.

    Each sampler takes the `steps` timesteps of ddim_timesteps (all T when None): DDPM ancestral on the chain
    respaced to them, with sigma_t^2 the network's learned variance or else `variance` (beta_t or beta~_t); DDIM
    (stochastic with eta > 0), DPM-Solver++(2M) and SDE-DPM-Solver++(2M) on the chain as it is. x0_hat is
    clipped to [-1, 1] with `clip_denoised`. Every random number comes from `generator` (one torch.Generator for
    the batch, or PerSampleGenerators: one for each image), x_T first, then each stochastic step's z in step
    order: one seed gives the same samples however the steps are consumed.
    `cond_fn` is classifier guidance: the steps run without autograd, so it turns autograd on for itself.
    """
    x = noise.to(device) if noise is not None else draw_noise(shape, generator, device)
    pairs = timestep_pairs(diffusion.num_timesteps, sampler, steps)
    if sampler == "ddpm":  # the respaced chain's index i stands for timestep kept[i] (identity at all T)
        kept = torch.tensor(sorted(t for t, _ in pairs), device=device)
        chain = diffusion if len(kept) == diffusion.num_timesteps else diffusion.respaced(kept.tolist())
        chain_model = lambda x_t, i: model(x_t, kept[i])  # noqa: E731
        chain_cond = None if cond_fn is None else (lambda x_t, i: cond_fn(x_t, kept[i]))
    previous = None  # DPM-Solver++'s (x0_hat, t) of the step before, for its second-order correction
    for index, (t, t_prev) in enumerate(pairs):
        with torch.no_grad():
            if sampler == "ddpm":
                x_next, x0_hat = ddpm_step(chain_model, chain, x, len(pairs) - 1 - index, variance=variance,
                                           clip_denoised=clip_denoised, generator=generator, cond_fn=chain_cond)
            elif sampler == "ddim":
                x_next, x0_hat = ddim_step(model, diffusion, x, t, t_prev, eta=eta, clip_denoised=clip_denoised,
                                           generator=generator, cond_fn=cond_fn)
            elif sampler in ("dpmpp_2m", "dpmpp_2m_sde"):
                x_next, x0_hat = dpmpp_2m_step(model, diffusion, x, t, t_prev, previous=previous,
                                               sde=sampler == "dpmpp_2m_sde", clip_denoised=clip_denoised,
                                               generator=generator, cond_fn=cond_fn)
                previous = (x0_hat, t)
            else:
                raise ValueError(f"unknown sampler {sampler!r}: use ddpm, ddim, dpmpp_2m or dpmpp_2m_sde")
        yield SamplerStep(t, x, x0_hat, x_next)
        x = x_next


def sample(model: Model, diffusion: GaussianDiffusion, shape: tuple[int, ...], **settings) -> torch.Tensor:
    """x_0 ~ p_theta: the last sample of sample_loop_progressive with these `settings` (improved-diffusion's
    p_sample_loop)."""
    last, = deque(sample_loop_progressive(model, diffusion, shape, **settings), maxlen=1)  # holds one step at a time
    return last.sample
