"""How the samplers call their network, with a network that is not 0: the exact denoiser of Gaussian data.

For x_0 ~ N(mu, s^2) per pixel, x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps is Gaussian too, and the network's
best eps prediction is the closed form E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 -
abar). Each sampler's output is checked against an independent computation: DDPM and DDIM against their
update equations written out here, DPM-Solver++ against the exact probability-flow map of Gaussian data;
sampling's batches against their labels, and the report's trajectory against the closed-form x0_hat.
(benchmarks/mutants.py names the mutants these tests kill.)
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ddpm.config.groups import SampleConfig
from ddpm.data import to_uint8_images
from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import ddim_timesteps, sample, sample_loop_progressive
from ddpm.sampling import generate, sample_labels
from ddpm.schedules import cosine_betas
from ddpm.trajectory import reverse_trajectory

MU, S, T = 0.3, 0.2, 40
BETAS = cosine_betas(T)
ABAR = np.cumprod(1 - BETAS)
SHAPE = (64, 1, 8, 8)
# the samplers end at E[x_0 | x at index 0], whose spread over the data is a little below S
END_STD = math.sqrt(ABAR[0]) * S**2 / math.sqrt(ABAR[0] * S**2 + 1 - ABAR[0])


def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[eps | x_t] for x_0 ~ N(MU, S^2), in float64."""
    abar = torch.from_numpy(ABAR)[t].reshape(-1, 1, 1, 1).to(x_t.dtype)
    return (1 - abar).sqrt() * (x_t - abar.sqrt() * MU) / (abar * S**2 + 1 - abar)


def x0_of(x_t: torch.Tensor, t: int) -> torch.Tensor:
    """E[x_0 | x_t] for the same data: the posterior mean."""
    return MU + math.sqrt(ABAR[t]) * S**2 * (x_t - math.sqrt(ABAR[t]) * MU) / (ABAR[t] * S**2 + 1 - ABAR[t])


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(BETAS, "eps")


def draws(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_ddpm_is_ho_et_als_ancestral_step_with_the_network_at_x_t_and_t(diffusion):
    got = sample(denoiser, diffusion, SHAPE, sampler="ddpm", clip_denoised=False, generator=draws(0))
    g = draws(0)
    x = torch.randn(SHAPE, generator=g).double()
    abar_prev = np.append(1.0, ABAR[:-1])
    for t in reversed(range(T)):
        x0 = (x - math.sqrt(1 - ABAR[t]) * denoiser(x, torch.full((len(x),), t))) / math.sqrt(ABAR[t])
        mean = (math.sqrt(abar_prev[t]) * BETAS[t] / (1 - ABAR[t]) * x0
                + math.sqrt(1 - BETAS[t]) * (1 - abar_prev[t]) / (1 - ABAR[t]) * x)
        x = mean + math.sqrt(BETAS[t]) * torch.randn(SHAPE, generator=g).double() if t > 0 else mean
    torch.testing.assert_close(got.double(), x, rtol=1e-4, atol=1e-5)
    # and the exact denoiser samples the data (ancestral steps with sigma^2 = beta_t overdisperse a little)
    assert got.mean().item() == pytest.approx(MU, abs=0.02) and got.std().item() == pytest.approx(END_STD, rel=0.1)


@pytest.mark.parametrize("steps", [T, 8])
def test_ddim_is_song_et_als_equation_12_with_the_network_at_x_t_and_t(diffusion, steps):
    got = sample(denoiser, diffusion, SHAPE, sampler="ddim", steps=steps, clip_denoised=False, generator=draws(1))
    x = torch.randn(SHAPE, generator=draws(1)).double()
    ts = ddim_timesteps(T, steps)
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        eps = denoiser(x, torch.full((len(x),), t))
        x0 = (x - math.sqrt(1 - ABAR[t]) * eps) / math.sqrt(ABAR[t])
        abar_prev = ABAR[t_prev] if t_prev >= 0 else 1.0
        x = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev) * eps
    torch.testing.assert_close(got.double(), x, rtol=1e-4, atol=1e-5)


def exact_flow(x_T: torch.Tensor, t: int) -> torch.Tensor:
    """The samplers' end, E[x_0 | x at index 0], of the probability-flow ODE from x_T at index t for Gaussian
    data: the flow keeps each value's standardised position in the marginal N(sqrt(abar) MU, abar S^2 + 1 - abar)."""
    z = (x_T - math.sqrt(ABAR[t]) * MU) / math.sqrt(ABAR[t] * S**2 + 1 - ABAR[t])
    return x0_of(math.sqrt(ABAR[0]) * MU + math.sqrt(ABAR[0] * S**2 + 1 - ABAR[0]) * z, 0)


@pytest.mark.parametrize("steps, tolerance", [(10, 0.15), (20, 0.05)])
def test_dpmpp_2m_is_lu_et_als_multistep_update_and_near_the_exact_flow(diffusion, steps, tolerance):
    """The update written out (Lu et al. 2022, Algorithm 2; first order at the first and the last two steps),
    and, as a looser check of the whole, the exact probability-flow solution it converges to."""
    noise = torch.randn(SHAPE, generator=draws(2)).double()
    got = sample(denoiser, diffusion, SHAPE, sampler="dpmpp_2m", steps=steps, clip_denoised=False, noise=noise)
    lam = lambda t: 0.5 * math.log(ABAR[t] / (1 - ABAR[t]))
    ts = ddim_timesteps(T, steps)
    x, before = noise, None
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        x0 = (x - math.sqrt(1 - ABAR[t]) * denoiser(x, torch.full((len(x),), t))) / math.sqrt(ABAR[t])
        if t_prev < 0:
            x = x0
            break
        h = lam(t_prev) - lam(t)
        data = x0
        if before is not None and t_prev > 0:
            r = (lam(t) - lam(before[1])) / h
            data = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * before[0]
        x = math.sqrt((1 - ABAR[t_prev]) / (1 - ABAR[t])) * x - math.sqrt(ABAR[t_prev]) * math.expm1(-h) * data
        before = (x0, t)
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-6)
    assert (got - exact_flow(noise, ts[0])).abs().max().item() < tolerance


def test_dpmpp_2m_sde_samples_the_data_distribution(diffusion):
    got = sample(denoiser, diffusion, (256, 1, 8, 8), sampler="dpmpp_2m_sde", steps=T, clip_denoised=False,
                 generator=draws(3))
    assert got.mean().item() == pytest.approx(MU, abs=0.01) and got.std().item() == pytest.approx(END_STD, rel=0.03)


class LabelPainter(torch.nn.Module):
    """A conditional x0-predicting 'U-Net' whose x0 is a flat image of grey level y / (classes - 1)."""

    num_classes, channels, image_size = 3, 1, 4
    cfg = SimpleNamespace(learn_sigma=False)

    def forward(self, x_t, t, y):
        return (2.0 * y.float() / (self.num_classes - 1) - 1.0).reshape(-1, 1, 1, 1).expand_as(x_t)


def test_sampling_gives_the_labels_of_every_batch_not_only_the_first():
    cfg = SampleConfig(num_samples=7, batch_size=2, sampler="ddim", steps=3, autoguidance=0.0)
    net = LabelPainter()
    images = generate(net, GaussianDiffusion(cosine_betas(10), "x0"), cfg, progress=False)
    levels = np.round(images[:, 0, 0, 0] / 255.0 * (net.num_classes - 1)).astype(int)
    np.testing.assert_array_equal(levels, sample_labels(cfg, net.num_classes))
    np.testing.assert_array_equal(levels, [0, 1, 2, 0, 1, 2, 0])


@pytest.mark.parametrize("sampler, steps", [("ddim", 8), ("dpmpp_2m", 8), ("ddpm", T)])
def test_the_trajectory_shows_each_columns_own_x0_hat(diffusion, sampler, steps):
    """Column j's x0_hat is E[x_0 | x_t] of column j's own x_t and t (the closed form, not the network)."""
    cfg = SampleConfig(sampler=sampler, steps=steps, clip_denoised=True)
    shape = (4, 1, 8, 8)
    traj = reverse_trajectory(denoiser, diffusion, cfg, shape, columns=5, generator=draws(4))
    run = sample_loop_progressive(denoiser, diffusion, shape, sampler=sampler, steps=steps, clip_denoised=True,
                                  generator=draws(4))
    x_t = {step.t: step.x_t for step in run}
    for j, t in enumerate(traj.timesteps):
        np.testing.assert_array_equal(traj.x_t[:, j], to_uint8_images(x_t[t]))
        want = to_uint8_images(x0_of(x_t[t].double(), t).clamp(-1, 1)).astype(int)
        assert np.abs(traj.x0_hat[:, j].astype(int) - want).max() <= 1, f"column {j} (t = {t})"
