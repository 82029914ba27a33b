"""How training draws the timestep of each image: uniformly (Ho et al. 2020), at EDM's noise levels (Karras et
al. 2022), or by importance sampling on the loss's second moment (Nichol & Dhariwal 2021, sec. 3.3).

A sampler draws the whole global batch's t from torch's global generator (whose state the run's snapshots
keep), with each image's importance weight, or None where the loss is averaged as drawn.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ddpm.diffusion import GaussianDiffusion


class UniformTimesteps:
    """t ~ U{0..T-1}."""

    uses_losses = False  # whether update() learns from the losses (then the ranks gather theirs)

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def sample(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.randint(0, self.num_timesteps, (batch_size,), device=device), None

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Nothing to learn from the losses."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def lognormal_timestep_probs(diffusion: GaussianDiffusion, p_mean: float, p_std: float) -> torch.Tensor:
    """P(t) for EDM's training noise levels on this chain: ln sigma ~ N(p_mean, p_std^2), rounded to the
    nearest ln sigma_t (Karras et al. 2022, sec. 5), float64 of length T.

    sigma_t = sqrt((1 - abar_t) / abar_t) is the noise level of x_t / sqrt(abar_t), the VP chain seen as
    EDM's variance-exploding one. With sigma_data = 1, EDM's preconditioning is v-prediction: c_skip =
    abar_t, c_out = sqrt(1 - abar_t) and c_in = sqrt(abar_t) turn D(x) = c_skip x + c_out F(c_in x) into
    x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_hat with F = -v, and EDM's weight lambda = 1 / c_out^2
    makes its loss the unweighted v loss. So on a v-prediction model the lognormal noise levels are the
    one part of EDM's training that differs from t ~ U{0..T-1}.
    """
    abar = diffusion.alphas_cumprod
    log_sigma = 0.5 * torch.log((1.0 - abar) / abar)  # increasing in t
    midpoints = (log_sigma[1:] + log_sigma[:-1]) / 2
    inf = torch.tensor([math.inf], dtype=torch.float64)
    cdf = torch.special.ndtr((torch.cat([-inf, midpoints, inf]) - p_mean) / p_std)
    return cdf[1:] - cdf[:-1]


class LognormalTimesteps(UniformTimesteps):
    """t ~ lognormal_timestep_probs: a chosen weighting of the noise levels, so no importance weights."""

    def __init__(self, diffusion: GaussianDiffusion, p_mean: float, p_std: float):
        super().__init__(diffusion.num_timesteps)
        self.probs = lognormal_timestep_probs(diffusion, p_mean, p_std).float()

    def sample(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.multinomial(self.probs.to(device), batch_size, replacement=True), None


class LossSecondMomentTimesteps(UniformTimesteps):
    """p_t proportional to sqrt(E[L_t^2]) over each t's last `history` losses, mixed with `uniform_share` of the
    uniform distribution, and uniform until every t has its `history` losses (improved-diffusion's
    LossSecondMomentResampler). Weights 1 / (T p_t) keep the weighted loss's expectation the uniform one's:
    E_p[L_t / (T p_t)] = sum_t L_t / T."""

    uses_losses = True

    def __init__(self, num_timesteps: int, history: int = 10, uniform_share: float = 0.001):
        super().__init__(num_timesteps)
        self.uniform_share = uniform_share
        self.losses = torch.zeros(num_timesteps, history, dtype=torch.float64)
        self.counts = torch.zeros(num_timesteps, dtype=torch.long)

    def probs(self) -> torch.Tensor:
        if not (self.counts == self.losses.shape[1]).all():
            return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)
        root_mean_square = self.losses.square().mean(1).sqrt()
        return (1 - self.uniform_share) * root_mean_square / root_mean_square.sum() + self.uniform_share / self.num_timesteps

    def sample(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        probs = self.probs()
        t = torch.multinomial(probs, batch_size, replacement=True)
        return t.to(device), (1.0 / (self.num_timesteps * probs[t])).float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Keep each t's newest losses, in the batch's order."""
        history = self.losses.shape[1]
        for step, loss in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            if self.counts[step] == history:
                self.losses[step, :-1] = self.losses[step, 1:].clone()
                self.losses[step, -1] = loss
            else:
                self.losses[step, self.counts[step]] = loss
                self.counts[step] += 1

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses, self.counts = state["losses"].clone(), state["counts"].clone()


def timestep_sampler(diffusion: GaussianDiffusion, *, lognormal_noise: tuple[float, float] | None = None,
                     importance_sampling: bool = False) -> UniformTimesteps:
    if importance_sampling:
        return LossSecondMomentTimesteps(diffusion.num_timesteps)
    if lognormal_noise is not None:
        return LognormalTimesteps(diffusion, *lognormal_noise)
    return UniformTimesteps(diffusion.num_timesteps)
