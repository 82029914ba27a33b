"""The diffusion code learns: an MLP eps-model on two moons, judged by a two-sample statistic."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from ddpm import samplers
from ddpm.diffusion import GaussianDiffusion
from ddpm.schedules import cosine_betas
from ddpm.unet import timestep_embedding


def two_moons(n: int, rng: np.random.Generator, noise: float = 0.05) -> torch.Tensor:
    theta = rng.uniform(0, math.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(theta), 1 - np.cos(theta))
    y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
    pts = np.stack([x - 0.5, y - 0.25], axis=1) + noise * rng.standard_normal((n, 2))
    return torch.tensor(pts, dtype=torch.float32)


class MLP(nn.Module):
    def __init__(self, hidden: int = 128, temb: int = 32):
        super().__init__()
        self.temb = temb
        self.net = nn.Sequential(nn.Linear(2 + temb, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, timestep_embedding(t, self.temb)], dim=1))


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """2 E|A - B| - E|A - A'| - E|B - B'|: zero iff the distributions match."""
    return (2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()).item()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = two_moons(4000, rng)
    return GaussianDiffusion(cosine_betas(100), "eps"), data, two_moons(1000, rng)


def sample(diffusion, model, sampler, n=1000):
    with torch.no_grad():
        return samplers.sample(model, diffusion, (n, 2), sampler=sampler, steps=25, clip_denoised=False,
                                generator=torch.Generator().manual_seed(1))


def test_mlp_learns_two_moons_and_untrained_fails(setup):
    diffusion, data, held_out = setup
    model = MLP()
    floor = energy_distance(two_moons(1000, np.random.default_rng(5)), held_out)
    untrained = energy_distance(sample(diffusion, model, "ddim"), held_out)

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 1500)
    gen = torch.Generator().manual_seed(0)
    for step in range(1500):
        x0 = data[torch.randint(0, len(data), (256,), generator=gen)]
        loss = diffusion.training_loss(model, x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()
    threshold = 0.02
    ddpm = energy_distance(sample(diffusion, model, "ddpm"), held_out)
    ddim = energy_distance(sample(diffusion, model, "ddim"), held_out)
    print(f"energy distance: data floor {floor:.4f}, untrained {untrained:.4f}, DDPM {ddpm:.4f}, DDIM {ddim:.4f}")
    assert floor < threshold, "the threshold must admit real data"
    assert untrained > threshold
    assert ddpm < threshold
    assert ddim < threshold
