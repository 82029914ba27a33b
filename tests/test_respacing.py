"""DDPM on a respaced chain (Nichol & Dhariwal 2021, sec. 4): the same abar at every kept timestep, the network
told the original timesteps, and the learned variance interpolating the respaced chain's beta' and beta~'."""

import numpy as np
import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import ddim_timesteps, sample_loop_progressive
from ddpm.schedules import cosine_betas


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(cosine_betas(100), "eps", learn_sigma=True)


def test_a_respaced_chain_keeps_abar_at_the_kept_timesteps(diffusion):
    kept = ddim_timesteps(100, 7)
    spaced = diffusion.respaced(kept)
    torch.testing.assert_close(spaced.alphas_cumprod, diffusion.alphas_cumprod[sorted(kept)], rtol=1e-12, atol=0)
    np.testing.assert_allclose(diffusion.respaced(list(range(100))).betas.numpy(), diffusion.betas.numpy(), rtol=1e-12)
    assert spaced.learn_sigma and spaced.prediction == "eps"


def test_respaced_ddpm_calls_the_network_at_the_original_timesteps_and_steps_on_the_respaced_chain(diffusion):
    seen = []

    def network(x_t, t):
        seen.append(int(t[0]))
        return torch.cat([torch.full_like(x_t, 0.3), torch.full_like(x_t, 0.5)], dim=1)  # eps, then v

    noise = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    steps = list(sample_loop_progressive(network, diffusion, noise.shape, sampler="ddpm", steps=10, noise=noise,
                                         clip_denoised=False, generator=torch.Generator().manual_seed(1)))
    kept = ddim_timesteps(100, 10)
    assert seen == kept and [s.t for s in steps] == kept
    # the first step by hand, on the respaced chain: index 9 stands for timestep kept[0]
    spaced, i = diffusion.respaced(kept), 9
    abar, abar_prev, beta = (spaced.alphas_cumprod[i].item(), spaced.alphas_cumprod[i - 1].item(),
                             spaced.betas[i].item())
    x0 = (noise - (1 - abar) ** 0.5 * 0.3) / abar**0.5
    mean = (beta * abar_prev**0.5 / (1 - abar)) * x0 + ((1 - abar_prev) * (1 - beta) ** 0.5 / (1 - abar)) * noise
    beta_tilde = beta * (1 - abar_prev) / (1 - abar)
    log_var = 0.75 * np.log(beta) + 0.25 * np.log(beta_tilde)  # u = (0.5 + 1) / 2
    z = torch.randn(noise.shape, generator=torch.Generator().manual_seed(1))  # the first z after the given x_T
    torch.testing.assert_close(steps[0].sample, mean + np.exp(0.5 * log_var) * z, rtol=1e-5, atol=1e-6)
