"""Classifier guidance in the samplers (Dhariwal & Nichol 2021): one guided DDPM step (Algorithm 1, the mean
shifted by Sigma s grad) and one guided DDIM step (Algorithm 2, eps shifted by -sqrt(1 - abar) s grad) by hand."""

import math

import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import ddim_step, ddpm_step, dpmpp_2m_step
from ddpm.schedules import cosine_betas

EPS, GRAD = 0.4, torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]], dtype=torch.float64)


def eps_network(x_t, t):
    return torch.full_like(x_t, EPS)


def cond_fn(x_t, t):
    return GRAD.expand_as(x_t)


def test_a_guided_ddpm_step_shifts_the_mean_by_the_variance_times_the_gradient():
    d = GaussianDiffusion(cosine_betas(100), "eps")
    x = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for variance in ("beta", "beta_tilde"):
        plain, _ = ddpm_step(eps_network, d, x, 40, variance=variance, clip_denoised=False,
                             generator=torch.Generator().manual_seed(1))
        guided, _ = ddpm_step(eps_network, d, x, 40, variance=variance, clip_denoised=False,
                              generator=torch.Generator().manual_seed(1), cond_fn=cond_fn)
        sigma2 = d.betas[40].item() if variance == "beta" else d.posterior_variance[40].item()
        torch.testing.assert_close(guided - plain, sigma2 * GRAD, rtol=1e-10, atol=1e-12)


def test_a_guided_ddim_step_is_the_ddim_step_of_the_shifted_eps():
    d = GaussianDiffusion(cosine_betas(100), "eps")
    x = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, t_prev = 60, 40
    abar, abar_prev = d.alphas_cumprod[t].item(), d.alphas_cumprod[t_prev].item()
    eps = EPS - math.sqrt(1 - abar) * GRAD
    x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    by_hand = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev) * eps
    guided, x0_hat = ddim_step(eps_network, d, x, t, t_prev, clip_denoised=False, cond_fn=cond_fn)
    torch.testing.assert_close(guided, by_hand, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-10, atol=1e-12)
    # DPM-Solver++'s first-order step is DDIM's: the score form reaches it through the same x0_hat
    first_order, _ = dpmpp_2m_step(eps_network, d, x, t, t_prev, clip_denoised=False, cond_fn=cond_fn)
    torch.testing.assert_close(first_order, by_hand, rtol=1e-10, atol=1e-12)
