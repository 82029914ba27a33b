"""The diffusion maths against closed forms computed independently in float64."""

import math

import numpy as np
import pytest
import torch

from ddpm.diffusion import (
    GaussianDiffusion,
    cosine_alphas_cumprod,
    cosine_betas,
    ddim_timesteps,
    linear_betas,
)

T = 1000


@pytest.fixture(params=["linear", "cosine"])
def diffusion(request):
    betas = linear_betas(T) if request.param == "linear" else cosine_betas(T)
    return GaussianDiffusion(betas)


def test_linear_schedule_endpoints():
    betas = linear_betas(T)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.all(np.diff(betas) > 0)
    # a shorter chain is rescaled so it still ends near pure noise
    assert np.prod(1 - linear_betas(100)) < 1e-4


def test_cosine_alphas_cumprod_matches_formula():
    s = 0.008
    d = GaussianDiffusion(cosine_betas(T, s))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in [1, 10, 250, 500, 900, 990]:  # paper t; code index t - 1
        assert d.alphas_cumprod[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-12)
    assert cosine_alphas_cumprod(T, s)[0] == 1.0
    assert cosine_betas(T, s).max() <= 0.999 and d.betas.dtype == torch.float64


def test_q_sample_mean_and_variance_by_monte_carlo(diffusion):
    torch.manual_seed(0)
    n = 200_000
    x0 = torch.tensor([0.7, -0.3], dtype=torch.float64).repeat(n, 1)
    for t in [0, 100, 500, 999]:
        tt = torch.full((n,), t)
        xt = diffusion.q_sample(x0, tt)
        abar = diffusion.alphas_cumprod[t].item()
        mean_expected = math.sqrt(abar) * x0[0]
        torch.testing.assert_close(xt.mean(0), mean_expected, atol=4 * math.sqrt((1 - abar) / n) + 1e-9, rtol=0)
        torch.testing.assert_close(xt.var(0), torch.full((2,), 1 - abar, dtype=torch.float64),
                                   atol=5 * (1 - abar) * math.sqrt(2 / n) + 1e-9, rtol=0)
        mean, var = diffusion.q_mean_variance(x0[:1], tt[:1])
        torch.testing.assert_close(mean[0], mean_expected)
        torch.testing.assert_close(var[0], torch.full((2,), 1 - abar, dtype=torch.float64))


def test_posterior_matches_bayes_rule(diffusion):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): product of two Gaussians in x_{t-1}."""
    x0 = torch.tensor([[0.5, -0.9]], dtype=torch.float64)
    xt = torch.tensor([[0.1, 1.3]], dtype=torch.float64)
    betas = diffusion.betas.numpy()
    for t in [1, 2, 50, 500, 999]:  # code index (the paper's t + 1)
        abar_prev = np.prod(1 - betas[:t])
        alpha_t = 1 - betas[t]
        # q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t): as a Gaussian in x_{t-1},
        # precision alpha_t / beta_t, mean x_t / sqrt(alpha_t)
        prec_lik, mean_lik = alpha_t / betas[t], xt.numpy() / math.sqrt(alpha_t)
        prec_prior, mean_prior = 1 / (1 - abar_prev), math.sqrt(abar_prev) * x0.numpy()
        var = 1 / (prec_lik + prec_prior)
        mean = var * (prec_lik * mean_lik + prec_prior * mean_prior)
        got_mean, got_var, got_logvar = diffusion.q_posterior_mean_variance(x0, xt, torch.tensor([t]))
        np.testing.assert_allclose(got_mean.numpy(), mean, rtol=1e-10)
        np.testing.assert_allclose(got_var.numpy().ravel(), var, rtol=1e-10)
        np.testing.assert_allclose(np.exp(got_logvar.numpy()).ravel(), var, rtol=1e-10)


def test_parameterisations_round_trip(diffusion):
    torch.manual_seed(1)
    x0, eps = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    t = torch.randint(0, T, (8,))
    xt = diffusion.q_sample(x0, t, eps)
    torch.testing.assert_close(diffusion.predict_x0_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(diffusion.predict_eps_from_x0(xt, t, x0), eps)
    torch.testing.assert_close(diffusion.predict_x0_from_v(xt, t, diffusion.velocity(x0, t, eps)), x0)


def test_one_ddpm_step_matches_ho_et_al_equation(diffusion):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, sigma_t^2 = beta_t."""
    torch.manual_seed(2)
    xt = torch.randn(4, 2, dtype=torch.float64)
    eps = torch.randn(4, 2, dtype=torch.float64)
    model = lambda x, t: eps  # noqa: E731  a fixed eps prediction
    for t in [1, 10, 400, 999]:
        gen = torch.Generator().manual_seed(t)
        got = diffusion.p_sample(model, xt, t, generator=gen, variance="beta", clip_denoised=False)
        z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(t), dtype=xt.dtype)
        beta, alpha, abar = (diffusion.betas[t].item(), diffusion.alphas[t].item(),
                             diffusion.alphas_cumprod[t].item())
        expected = (xt - beta / math.sqrt(1 - abar) * eps) / math.sqrt(alpha) + math.sqrt(beta) * z
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # sigma^2 = beta~ gives the posterior variance instead; t = 0 adds no noise
    got0 = diffusion.p_sample(model, xt, 0, variance="beta_tilde", clip_denoised=False)
    expected0 = (xt - diffusion.betas[0].item() / math.sqrt(1 - diffusion.alphas_cumprod[0].item()) * eps) \
        / math.sqrt(diffusion.alphas[0].item())
    torch.testing.assert_close(got0, expected0)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    d = GaussianDiffusion(cosine_betas(100))
    model = lambda x, t: 0.1 * x  # noqa: E731
    noise = torch.randn(5, 1, 4, 4)
    run = lambda eta, seed: d.sample(model, noise.shape, sampler="ddim", steps=10, eta=eta,  # noqa: E731
                                     noise=noise, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(run(0.0, 0), run(0.0, 1), rtol=0, atol=0)
    assert not torch.allclose(run(1.0, 0), run(1.0, 1))


def test_ddim_with_all_steps_and_eta1_has_ddpm_beta_tilde_variance():
    """With every timestep and eta = 1, DDIM's sigma_t^2 equals the DDPM posterior variance beta~_t."""
    d = GaussianDiffusion(linear_betas(50))
    for t in [1, 10, 49]:
        abar_t, abar_prev = d.alphas_cumprod[t].item(), d.alphas_cumprod[t - 1].item()
        sigma2 = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
        assert sigma2 == pytest.approx(d.posterior_variance[t].item(), rel=1e-12)


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 10) == list(range(900, -1, -100))
    assert len(ddim_timesteps(1000, 50)) == 50 and len(ddim_timesteps(1000, 300)) == 300
    assert ddim_timesteps(20, 100) == list(range(19, -1, -1))


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_loss_is_zero_for_the_oracle(prediction):
    d = GaussianDiffusion(cosine_betas(100), prediction=prediction)
    x0 = torch.rand(6, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.randint(0, 100, (6,))
    oracle = lambda x, tt: d.training_target(x0, tt, noise)  # noqa: E731
    assert d.training_loss(oracle, x0, t, noise).item() == pytest.approx(0.0, abs=1e-12)
    x0_hat, eps_hat = d.predict_x0_eps(oracle(None, t), d.q_sample(x0, t, noise), t, clip_denoised=False)
    torch.testing.assert_close(x0_hat, x0, atol=2e-4, rtol=1e-4)
