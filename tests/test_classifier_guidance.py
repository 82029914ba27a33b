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


# ---------------------------------------------------------------------------- a two-class mixture in closed form
# x0 | y ~ N(m_y, S^2) in 1-D, y = 0 or 1 with equal priors, so q(x_t | y) = N(sqrt(abar) m_y, abar S^2 + 1 - abar):
# the exact classifier p(y | x_t, t) and the exact unconditional denoiser E[x0 | x_t] (the mixture's posterior mean)
# are closed forms, and guiding the exact unconditional model by the exact classifier at s = 1 is sampling q(x | y).
MEANS, S = torch.tensor([-1.0, 1.0], dtype=torch.float64), 0.3


def _abar(d: GaussianDiffusion, t: torch.Tensor) -> torch.Tensor:
    return d.alphas_cumprod[t].to(torch.float64).reshape(-1, 1)


def mixture_logits(d: GaussianDiffusion):
    """log q(x_t | y) + const for y = 0, 1: the analytic noise-aware classifier's logits, (x_t, t) -> (B, 2)."""
    def logits(x_t, t):
        abar = _abar(d, t)
        var = abar * S**2 + 1 - abar
        return -(x_t - abar.sqrt() * MEANS) ** 2 / (2 * var)  # (B, 1) against the (2,) means: (B, 2)
    return logits


def mixture_gradient(d: GaussianDiffusion, x_t, t, y):
    """grad_x log p(y | x_t, t) by hand: (sqrt(abar) (m_y - E[m | x_t])) / var."""
    abar = _abar(d, t)
    var = abar * S**2 + 1 - abar
    post = torch.softmax(mixture_logits(d)(x_t, t), dim=1)
    return abar.sqrt() * (MEANS[y].reshape(-1, 1) - (post * MEANS).sum(1, keepdim=True)) / var


def mixture_denoiser(d: GaussianDiffusion):
    """E[x0 | x_t] of the mixture: each component's Gaussian posterior mean, weighted by p(y | x_t)."""
    def model(x_t, t):
        abar = _abar(d, t)
        var = abar * S**2 + 1 - abar
        post = torch.softmax(mixture_logits(d)(x_t, t), dim=1)
        means = MEANS + abar.sqrt() * S**2 / var * (x_t - abar.sqrt() * MEANS)
        return (post * means).sum(1, keepdim=True)
    return model


def test_the_cond_fn_of_the_analytic_classifier_is_the_scaled_gradient_of_its_log_probability():
    from ddpm.classifier_guidance import classifier_cond_fn

    d = GaussianDiffusion(cosine_betas(1000), "x0")
    x = torch.randn(64, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 1.5
    y = torch.arange(64) % 2
    t = torch.full((64,), 300)
    for scale in (1.0, 3.5):
        with torch.no_grad():  # as the samplers call it: cond_fn turns autograd on itself
            got = classifier_cond_fn(mixture_logits(d), y, scale)(x, t)
        torch.testing.assert_close(got, scale * mixture_gradient(d, x, t, y), rtol=1e-10, atol=1e-12)


def _share_in_asked_class(sampler: str, scale: float, steps: int, n: int = 2000) -> float:
    from ddpm.classifier_guidance import classifier_cond_fn
    from ddpm.samplers import sample

    d = GaussianDiffusion(cosine_betas(1000), "x0")
    y = torch.arange(n) % 2
    cond_fn = classifier_cond_fn(mixture_logits(d), y, scale) if scale else None
    x = sample(mixture_denoiser(d), d, (n, 1), sampler=sampler, steps=steps, clip_denoised=False,
               generator=torch.Generator().manual_seed(11), noise=None, cond_fn=cond_fn)
    x = x.to(torch.float64)
    landed = (x[:, 0] > 0).long()  # the class whose mean is nearer (m = -1 or +1, S = 0.3)
    return (landed == y).double().mean().item()


def test_guided_samples_of_the_exact_mixture_land_in_the_asked_class():
    """Unguided, half the samples land in the class asked for (the model ignores it); guided by the exact
    classifier at s = 1 (the conditional score exactly) and at s = 4 (sharper), nearly all do, for DDPM (mean
    shifted, Algorithm 1) and DDIM (score form, Algorithm 2). Measured: unguided 0.49-0.51, guided >= 0.999."""
    for sampler, steps in (("ddpm", 100), ("ddim", 50)):
        assert 0.45 < _share_in_asked_class(sampler, 0.0, steps) < 0.55, sampler
        for scale in (1.0, 4.0):
            assert _share_in_asked_class(sampler, scale, steps) > 0.95, (sampler, scale)


def test_at_s_1_guided_samples_are_the_class_conditional_distribution():
    """Guidance at s = 1 adds grad log p(y | x_t) to the unconditional score: the conditional score of
    N(m_y, S^2), so guided DDPM and DDIM draw that Gaussian (its mean and spread), not the mixture.
    Measured (4,000 draws, 100 steps): DDPM mean 0.996, std 0.301; DDIM 1.001, 0.286."""
    from ddpm.classifier_guidance import classifier_cond_fn
    from ddpm.samplers import sample

    d = GaussianDiffusion(cosine_betas(1000), "x0")
    y = torch.ones(4000, dtype=torch.long)
    for sampler in ("ddpm", "ddim"):
        x = sample(mixture_denoiser(d), d, (4000, 1), sampler=sampler, steps=100, clip_denoised=False,
                   generator=torch.Generator().manual_seed(12), cond_fn=classifier_cond_fn(mixture_logits(d), y, 1.0))
        x = x.to(torch.float64)[:, 0]
        assert abs(x.mean().item() - 1.0) < 0.03 and abs(x.std().item() - S) < 0.03, sampler
