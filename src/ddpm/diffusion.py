"""Gaussian diffusion: the forward process, its posterior, the parameterisations and the loss; the samplers
that run the reverse process on it are in ddpm.samplers.

Symbols follow Ho et al. 2020 (DDPM), Nichol & Dhariwal 2021 (cosine schedule, v/x0 notes),
Salimans & Ho 2022 (v), Hang et al. 2023 (min-SNR) and Lu et al. 2022 (lambda); the schedules are in
ddpm.schedules. Index t in code runs 0..T-1 and stands for the paper's t = 1..T.
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

from ddpm.config.training import DiffusionConfig
from ddpm.schedules import make_betas

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> prediction
Prediction = Literal["eps", "v", "x0"]
Variance = Literal["beta", "beta_tilde"]  # sigma_t^2 of a DDPM step


def _extract(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a[t] for a batch of timesteps, shaped to broadcast against x, in x's dtype."""
    return a.to(x.device)[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


# ---------------------------------------------------------------------------- diffusion
class GaussianDiffusion:
    """The chain of `betas` for a network that predicts `prediction` (eps, v or x0).

    `prediction` has no default: a network read as predicting what it does not samples noise, and nothing fails.
    """

    def __init__(self, betas: np.ndarray, prediction: Prediction):
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
        rec, recm1 = (_extract(c, t, x_t) for c in (self.sqrt_recip_alphas_cumprod, self.sqrt_recipm1_alphas_cumprod))
        return rec * x_t - recm1 * eps

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        rec, recm1 = (_extract(c, t, x_t) for c in (self.sqrt_recip_alphas_cumprod, self.sqrt_recipm1_alphas_cumprod))
        return (rec * x_t - x0) / recm1

    def velocity(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)."""
        alpha, sigma = _extract(self.sqrt_alphas_cumprod, t, x0), _extract(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return alpha * eps - sigma * x0

    def predict_x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        alpha, sigma = _extract(self.sqrt_alphas_cumprod, t, x_t), _extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return alpha * x_t - sigma * v

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
    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = abar_t / (1 - abar_t), float64."""
        abar = self.alphas_cumprod.to(t.device)[t]
        return abar / (1.0 - abar)

    def lognormal_timestep_probs(self, p_mean: float, p_std: float) -> torch.Tensor:
        """P(t) for EDM's training noise levels on this chain: ln sigma ~ N(p_mean, p_std^2), rounded to the
        nearest ln sigma_t (Karras et al. 2022, sec. 5), float64 of length T.

        sigma_t = sqrt((1 - abar_t) / abar_t) is the noise level of x_t / sqrt(abar_t), the VP chain seen as
        EDM's variance-exploding one. With sigma_data = 1, EDM's preconditioning is v-prediction: c_skip =
        abar_t, c_out = sqrt(1 - abar_t) and c_in = sqrt(abar_t) turn D(x) = c_skip x + c_out F(c_in x) into
        x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_hat with F = -v, and EDM's weight lambda = 1 / c_out^2
        makes its loss the unweighted v loss. So on a v-prediction model the lognormal noise levels are the
        one part of EDM's training that differs from t ~ U{0..T-1}.
        """
        abar = self.alphas_cumprod
        log_sigma = 0.5 * torch.log((1.0 - abar) / abar)  # increasing in t
        midpoints = (log_sigma[1:] + log_sigma[:-1]) / 2
        inf = torch.tensor([math.inf], dtype=torch.float64)
        cdf = torch.special.ndtr((torch.cat([-inf, midpoints, inf]) - p_mean) / p_std)
        return cdf[1:] - cdf[:-1]

    def loss_weight(self, t: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor:
        """Per-timestep weight of the target-space MSE; 1 everywhere without min-SNR.

        Min-SNR-gamma (Hang et al. 2023) weights the x0-space error by min(SNR, gamma). The
        target-space errors relate to it as |eps err|^2 = SNR |x0 err|^2 and |v err|^2 = (SNR + 1)
        |x0 err|^2, so the weight on the MSE of the target is min(SNR, gamma) / SNR (eps),
        min(SNR, gamma) / (SNR + 1) (v) or min(SNR, gamma) (x0).
        """
        if min_snr_gamma is None:
            return torch.ones(t.shape, dtype=torch.float64, device=t.device)
        snr = self.snr(t)
        clipped = snr.clamp(max=min_snr_gamma)
        if self.prediction == "eps":
            return clipped / snr
        if self.prediction == "v":
            return clipped / (snr + 1.0)
        return clipped

    def training_loss(
        self, model: Model, x0: torch.Tensor, t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
        *, min_snr_gamma: float | None = None,
    ) -> torch.Tensor:
        """sum_t w(t) || target - model(x_t, t) ||^2 / numel, t ~ U{0..T-1} unless given: L_simple when w = 1."""
        if t is None:
            t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, t)
        squared = (output.float() - self.training_target(x0, t, noise).float()).square()
        if min_snr_gamma is None:
            return squared.mean()
        per_image = squared.flatten(1).mean(1)
        return (self.loss_weight(t, min_snr_gamma).float() * per_image).mean()

    # -- reverse process -------------------------------------------------------------------
    def p_mean_variance(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor, *,
        variance: Variance = "beta", clip_denoised: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t), and x0_hat. sigma_t^2 = beta_t or beta~_t."""
        x0, _ = self.predict_x0_eps(model(x_t, t), x_t, t, clip_denoised)
        mean, _, log_var_tilde = self.q_posterior_mean_variance(x0, x_t, t)
        log_var = _extract(self.log_betas_large, t, x_t) if variance == "beta" else log_var_tilde
        return mean, log_var, x0

    def half_log_snr(self, t: int) -> float:
        """lambda_t = log(alpha_t / sigma_t) = log(abar_t / (1 - abar_t)) / 2."""
        abar = self.alphas_cumprod[t].item()
        return 0.5 * (math.log(abar) - math.log1p(-abar))
