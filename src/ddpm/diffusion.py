"""Gaussian diffusion: the forward process, its posterior, the parameterisations and the loss; the samplers
that run the reverse process on it are in ddpm.samplers.

Symbols follow Ho et al. 2020 (DDPM), Nichol & Dhariwal 2021 (cosine schedule, v/x0 notes),
Salimans & Ho 2022 (v), Hang et al. 2023 (min-SNR) and Lu et al. 2022 (lambda); the schedules are in
ddpm.schedules, the densities of the variational bound in ddpm.losses, the bound per image in ddpm.likelihood.
Index t in code runs 0..T-1 and stands for the paper's t = 1..T.
Every schedule quantity is computed once in float64 and cast to the input's dtype on use.

    q(x_t | x_0)        = N(sqrt(abar_t) x_0, (1 - abar_t) I)
    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)
        mu~_t   = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t

With learned variance (Nichol & Dhariwal 2021, "learned range") the network's output has a second half v in
[-1, 1] per pixel, and the reverse variance is exp(u log beta_t + (1 - u) log beta~_t) with u = (v + 1) / 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from ddpm.errors import CheckpointError
from ddpm.losses import discretized_gaussian_log_likelihood, normal_kl
from ddpm.schedules import make_betas

if TYPE_CHECKING:
    from ddpm.config import Config

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> prediction
Prediction = Literal["eps", "v", "x0"]
Variance = Literal["beta", "beta_tilde"]  # sigma_t^2 of a DDPM step with fixed variance
Loss = Literal["simple", "hybrid", "vlb"]
HYBRID_VLB_WEIGHT = 0.001  # lambda of L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, sec. 3.1)


def extract(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a[t] for a batch of timesteps, shaped to broadcast against x, in x's dtype."""
    return a.to(x.device)[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


# ---------------------------------------------------------------------------- diffusion
class GaussianDiffusion:
    """The chain of `betas` for a network that predicts `prediction` (eps, v or x0), and with `learn_sigma` its
    reverse variance too (twice the image's channels).

    `prediction` has no default: a network read as predicting what it does not samples noise, and nothing fails.
    """

    def __init__(self, betas: np.ndarray, prediction: Prediction, *, learn_sigma: bool = False):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1)")
        self.prediction, self.learn_sigma = prediction, learn_sigma
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
        self.log_betas = as_t(np.log(betas))  # the upper end of the learned range, as in improved-diffusion
        self.posterior_mean_coef1 = as_t(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self.posterior_mean_coef2 = as_t((1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod))

    @classmethod
    def from_config(cls, cfg: Config) -> GaussianDiffusion:
        """The chain of cfg.diffusion for the network of cfg.model (whether it learns the variance)."""
        return cls(make_betas(cfg.diffusion), cfg.diffusion.prediction, learn_sigma=cfg.model.learn_sigma)

    def respaced(self, timesteps: list[int]) -> GaussianDiffusion:
        """The chain on the sub-sequence `timesteps` of this one, with the same abar at each kept step:
        beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}} (Nichol & Dhariwal 2021, sec. 4). Its index i stands for
        timestep sorted(timesteps)[i] of this chain, which is what the network must be told."""
        abar = self.alphas_cumprod.numpy()[sorted(timesteps)]
        return GaussianDiffusion(1.0 - abar / np.append(1.0, abar[:-1]), self.prediction, learn_sigma=self.learn_sigma)

    # -- forward process -------------------------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = extract(self.sqrt_alphas_cumprod, t, x0) * x0
        variance = extract(1.0 - self.alphas_cumprod, t, x0).expand_as(x0)
        return mean, variance

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        noise = torch.randn_like(x0) if noise is None else noise
        return (extract(self.sqrt_alphas_cumprod, t, x0) * x0
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean mu~_t, variance beta~_t and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = extract(self.posterior_mean_coef1, t, x_t) * x0 + extract(self.posterior_mean_coef2, t, x_t) * x_t
        variance = extract(self.posterior_variance, t, x_t)
        log_variance = extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    # -- parameterisations -----------------------------------------------------------------
    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        rec, recm1 = (extract(c, t, x_t) for c in (self.sqrt_recip_alphas_cumprod, self.sqrt_recipm1_alphas_cumprod))
        return rec * x_t - recm1 * eps

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        rec, recm1 = (extract(c, t, x_t) for c in (self.sqrt_recip_alphas_cumprod, self.sqrt_recipm1_alphas_cumprod))
        return (rec * x_t - x0) / recm1

    def velocity(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)."""
        alpha, sigma = extract(self.sqrt_alphas_cumprod, t, x0), extract(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return alpha * eps - sigma * x0

    def predict_x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        alpha, sigma = extract(self.sqrt_alphas_cumprod, t, x_t), extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
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
        model_output, _ = self.split_output(model_output, x_t)
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

    def split_output(self, model_output: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The network's prediction and, with learned variance, its variance values v (else None)."""
        channels = x_t.shape[1] * (2 if self.learn_sigma else 1)
        if model_output.shape[1] != channels:
            raise CheckpointError(f"the network gives {model_output.shape[1]} channels for {x_t.shape[1]}-channel "
                                  f"images, expected {channels}: model.learn_sigma does not match the checkpoint")
        return tuple(model_output.chunk(2, dim=1)) if self.learn_sigma else (model_output, None)

    # -- loss ------------------------------------------------------------------------------
    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = abar_t / (1 - abar_t), float64."""
        abar = self.alphas_cumprod.to(t.device)[t]
        return abar / (1.0 - abar)

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

    def training_losses(
        self, model: Model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None, *,
        loss: Loss = "simple", min_snr_gamma: float | None = None,
    ) -> torch.Tensor:
        """The loss of each image at its t, float32 (B,).

        simple: w(t) ||target - prediction||^2 / numel (Ho et al.'s L_simple when w = 1); hybrid: that plus
        lambda L_vlb; vlb: L_vlb alone. L_vlb = T L_t, the bound's term at t (in bits/dim) times the T terms
        that a uniform t stands for; inside it the mean is detached, so L_vlb trains the variance alone (sec.
        3.1: L_simple is the better objective for the mean) unless it is the whole loss.
        """
        output, x_t, squared = self._squared_error(model, x0, t, noise)
        prediction, variance_values = self.split_output(output, x_t)
        if loss != "vlb":
            squared = squared.flatten(1).mean(1)
            losses = squared if min_snr_gamma is None else self.loss_weight(t, min_snr_gamma).float() * squared
            if loss == "simple":
                return losses
        if variance_values is None:
            raise ValueError(f"train.loss = {loss} trains the reverse variance: set model.learn_sigma: true")
        frozen = output if loss == "vlb" else torch.cat([prediction.detach(), variance_values], dim=1)
        vlb = self.num_timesteps * self.vb_terms_bpd(frozen, x0, x_t, t).float()
        return vlb if loss == "vlb" else losses + HYBRID_VLB_WEIGHT * vlb

    def training_loss(self, model: Model, x0: torch.Tensor, t: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None, *, loss: Loss = "simple",
                      min_snr_gamma: float | None = None) -> torch.Tensor:
        """The mean of training_losses over the batch, t ~ U{0..T-1} unless given.

        Unweighted L_simple is the mean over every element at once, as it was before per-image losses: the
        same value to the last bit, so the default's checkpoint keeps its bytes."""
        if t is None:
            t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        if loss == "simple" and min_snr_gamma is None:
            return self._squared_error(model, x0, t, noise)[2].mean()
        return self.training_losses(model, x0, t, noise, loss=loss, min_snr_gamma=min_snr_gamma).mean()

    def _squared_error(self, model: Model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network's output at x_t ~ q(x_t | x_0), x_t, and the prediction's elementwise squared error."""
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, t)
        prediction, _ = self.split_output(output, x_t)
        return output, x_t, (prediction.float() - self.training_target(x0, t, noise).float()).square()

    def vb_terms_bpd(
        self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *,
        variance: Variance = "beta", clip_denoised: bool = False,
    ) -> torch.Tensor:
        """The bound's term at t per image, in bits/dim, float64: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) ||
        p(x_{t-1} | x_t)) for t > 0 and the decoder's L_0 = -log p(x_0 | x_1) at t = 0 (x0 on the 8-bit grid)."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0.double(), x_t.double(), t)
        mean, log_var, _ = self.p_mean_variance(model_output.double(), x_t.double(), t, variance=variance,
                                                clip_denoised=clip_denoised)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).mean(1)
        decoder_nll = -discretized_gaussian_log_likelihood(x0.double(), mean, 0.5 * log_var).flatten(1).mean(1)
        return torch.where(t == 0, decoder_nll, kl) / math.log(2.0)

    # -- reverse process -------------------------------------------------------------------
    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *,
        variance: Variance = "beta", clip_denoised: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t), and x0_hat, from the network's output at (x_t, t).

        The variance is the learned one when the network has it, else sigma_t^2 = beta_t or beta~_t.
        """
        x0, _ = self.predict_x0_eps(model_output, x_t, t, clip_denoised)
        mean, _, log_var_tilde = self.q_posterior_mean_variance(x0, x_t, t)
        _, variance_values = self.split_output(model_output, x_t)
        if variance_values is not None:
            u = (variance_values + 1.0) / 2.0
            log_var = u * extract(self.log_betas, t, x_t) + (1.0 - u) * log_var_tilde
        else:
            log_var = extract(self.log_betas_large, t, x_t) if variance == "beta" else log_var_tilde.expand_as(x_t)
        return mean, log_var, x0

    def half_log_snr(self, t: int) -> float:
        """lambda_t = log(alpha_t / sigma_t) = log(abar_t / (1 - abar_t)) / 2."""
        abar = self.alphas_cumprod[t].item()
        return 0.5 * (math.log(abar) - math.log1p(-abar))
