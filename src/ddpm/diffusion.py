"""Gaussian diffusion: schedules, the forward process, the loss and the samplers.

Symbols follow Ho et al. 2020 (DDPM), Nichol & Dhariwal 2021 (cosine schedule, v/x0 notes)
and Song et al. 2020 (DDIM). Index t in code runs 0..T-1 and stands for the paper's t = 1..T.
Every schedule quantity is computed once in float64 and cast to the input's dtype on use.

    q(x_t | x_0)        = N(sqrt(abar_t) x_0, (1 - abar_t) I)
    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)
        mu~_t   = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ddpm.config import DiffusionConfig

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> prediction
Prediction = Literal["eps", "v", "x0"]


# ---------------------------------------------------------------------------- schedules
def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Ho et al.'s linear schedule, scaled by 1000 / T so that any T ends near abar_T = 0."""
    scale = 1000.0 / timesteps
    return np.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=np.float64).clip(max=0.999)


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008) -> np.ndarray:
    """abar(t) = f(t) / f(0), f(t) = cos^2(((t / T + s) / (1 + s)) pi / 2), for t = 0..T."""
    t = np.arange(timesteps + 1, dtype=np.float64)
    f = np.cos(((t / timesteps + s) / (1 + s)) * math.pi / 2) ** 2
    return f / f[0]


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """beta_t = 1 - abar(t) / abar(t - 1), clipped at max_beta to avoid the singularity at t = T."""
    abar = cosine_alphas_cumprod(timesteps, s)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def make_betas(cfg: DiffusionConfig) -> np.ndarray:
    if cfg.schedule == "linear":
        return linear_betas(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    return cosine_betas(cfg.timesteps, cfg.cosine_s)


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """The DDIM sub-sequence tau, descending: `steps` evenly spaced timesteps starting at 0.

    As in Song et al.'s code (t = 0, c, 2c, ...), the last index T - 1 is not visited when
    steps < T: with the cosine schedule abar_{T-1} is ~0, and predicting x_0 there would
    amplify the model's error by 1 / sqrt(abar_{T-1}).
    """
    steps = min(steps, timesteps)
    return sorted({int(i * timesteps // steps) for i in range(steps)}, reverse=True)


def _extract(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a[t] for a batch of timesteps, shaped to broadcast against x, in x's dtype."""
    return a.to(x.device)[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


# ---------------------------------------------------------------------------- diffusion
class GaussianDiffusion:
    def __init__(self, betas: np.ndarray, prediction: Prediction = "eps"):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1)")
        self.prediction = prediction
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
        self.betas = as_t(betas)
        self.alphas = as_t(alphas)
        self.alphas_cumprod = as_t(alphas_cumprod)
        self.alphas_cumprod_prev = as_t(alphas_cumprod_prev)
        self.sqrt_alphas_cumprod = as_t(np.sqrt(alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = as_t(np.sqrt(1.0 - alphas_cumprod))
        self.sqrt_recip_alphas_cumprod = as_t(np.sqrt(1.0 / alphas_cumprod))
        self.sqrt_recipm1_alphas_cumprod = as_t(np.sqrt(1.0 / alphas_cumprod - 1.0))
        self.posterior_variance = as_t(posterior_variance)
        # beta~_0 = 0: its log is clipped to beta~_1's, as in Ho et al.'s code
        self.posterior_log_variance_clipped = as_t(
            np.log(np.append(posterior_variance[1], posterior_variance[1:]))
            if len(betas) > 1 else np.log(betas)
        )
        # sigma_t^2 = beta_t ("fixedlarge"), with beta~_1 in place of beta_1 as in Ho et al.'s code:
        # t = 0 adds no noise, and the log of a tiny beta_1 would only add round-off.
        self.log_betas_large = as_t(np.log(np.append(posterior_variance[1], betas[1:]) if len(betas) > 1 else betas))
        self.posterior_mean_coef1 = as_t(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self.posterior_mean_coef2 = as_t((1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod))

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> GaussianDiffusion:
        return cls(make_betas(cfg), cfg.prediction)

    # -- forward process -------------------------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = _extract(self.sqrt_alphas_cumprod, t, x0) * x0
        variance = _extract(1.0 - self.alphas_cumprod, t, x0).expand_as(x0)
        return mean, variance

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        noise = torch.randn_like(x0) if noise is None else noise
        return (_extract(self.sqrt_alphas_cumprod, t, x0) * x0
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean mu~_t, variance beta~_t and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = _extract(self.posterior_mean_coef1, t, x_t) * x0 + _extract(self.posterior_mean_coef2, t, x_t) * x_t
        variance = _extract(self.posterior_variance, t, x_t)
        log_variance = _extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    # -- parameterisations -----------------------------------------------------------------
    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return _extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (_extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def velocity(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)."""
        return _extract(self.sqrt_alphas_cumprod, t, x0) * eps - _extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def predict_x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _extract(self.sqrt_alphas_cumprod, t, x_t) * x_t - _extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        if self.prediction == "eps":
            return eps
        if self.prediction == "v":
            return self.velocity(x0, t, eps)
        return x0

    def predict_x0_eps(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from the network output, whatever it predicts."""
        if self.prediction == "eps":
            x0 = self.predict_x0_from_eps(x_t, t, model_output)
        elif self.prediction == "v":
            x0 = self.predict_x0_from_v(x_t, t, model_output)
        else:
            x0 = model_output
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        if self.prediction == "eps" and not clip_denoised:
            return x0, model_output
        return x0, self.predict_eps_from_x0(x_t, t, x0)

    # -- loss ------------------------------------------------------------------------------
    def training_loss(
        self, model: Model, x0: torch.Tensor, t: torch.Tensor | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """L_simple: || target - model(x_t, t) ||^2 averaged over the batch (t ~ U{0..T-1})."""
        if t is None:
            t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, t)
        return F.mse_loss(output.float(), self.training_target(x0, t, noise).float())

    # -- reverse process -------------------------------------------------------------------
    def p_mean_variance(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor, *,
        variance: Literal["beta", "beta_tilde"] = "beta", clip_denoised: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t), and x0_hat. sigma_t^2 = beta_t or beta~_t."""
        x0, _ = self.predict_x0_eps(model(x_t, t), x_t, t, clip_denoised)
        mean, _, log_var_tilde = self.q_posterior_mean_variance(x0, x_t, t)
        log_var = _extract(self.log_betas_large, t, x_t) if variance == "beta" else log_var_tilde
        return mean, log_var, x0

    @torch.no_grad()
    def p_sample(
        self, model: Model, x_t: torch.Tensor, t: int, *, generator: torch.Generator | None = None,
        variance: Literal["beta", "beta_tilde"] = "beta", clip_denoised: bool = True,
    ) -> torch.Tensor:
        """One ancestral step x_t -> x_{t-1} = mu_theta + sigma_t z (no noise at t = 0)."""
        tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        mean, log_var, _ = self.p_mean_variance(model, x_t, tt, variance=variance, clip_denoised=clip_denoised)
        if t == 0:
            return mean
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + torch.exp(0.5 * log_var) * z

    @torch.no_grad()
    def ddim_step(
        self, model: Model, x_t: torch.Tensor, t: int, t_prev: int, *, eta: float = 0.0,
        generator: torch.Generator | None = None, clip_denoised: bool = True,
    ) -> torch.Tensor:
        """x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z.

        sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev); t_prev = -1
        means the final step to x_0 (abar_prev = 1).
        """
        tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0, eps = self.predict_x0_eps(model(x_t, tt), x_t, tt, clip_denoised)
        abar_t = self.alphas_cumprod[t].item()
        abar_prev = self.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar_t)) * math.sqrt(1 - abar_t / abar_prev)
        x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x_prev = x_prev + sigma * torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return x_prev

    @torch.no_grad()
    def sample(
        self, model: Model, shape: tuple[int, ...], *, sampler: Literal["ddpm", "ddim"] = "ddpm",
        steps: int | None = None, eta: float = 0.0, variance: Literal["beta", "beta_tilde"] = "beta",
        clip_denoised: bool = True, generator: torch.Generator | None = None,
        device: torch.device | str = "cpu", progress: bool = False, noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw x_0 ~ p_theta from x_T ~ N(0, I): DDPM ancestral (all T steps) or DDIM (`steps`)."""
        x = noise.to(device) if noise is not None else torch.randn(shape, generator=generator, device=device)
        if sampler == "ddpm":
            ts = list(range(self.num_timesteps - 1, -1, -1))
            for t in tqdm(ts, desc="DDPM", disable=not progress, leave=False):
                x = self.p_sample(model, x, t, generator=generator, variance=variance, clip_denoised=clip_denoised)
        else:
            ts = ddim_timesteps(self.num_timesteps, steps or self.num_timesteps)
            for t, t_prev in tqdm(list(zip(ts, ts[1:] + [-1])), desc="DDIM", disable=not progress, leave=False):
                x = self.ddim_step(model, x, t, t_prev, eta=eta, generator=generator, clip_denoised=clip_denoised)
        return x
