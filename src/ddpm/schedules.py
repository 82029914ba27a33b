"""Noise schedules beta_1..beta_T, computed in float64: Ho et al.'s linear, Nichol & Dhariwal's cosine."""

from __future__ import annotations

import math

import numpy as np

from ddpm.config.training import DiffusionConfig


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
