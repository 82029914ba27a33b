"""The diffusion maths and the DDPM and DDIM steps against closed forms computed independently in float64;
DPM-Solver++ and the sampling loop are in tests/test_sampling.py."""

import math

import numpy as np
import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import ddim_step, ddim_timesteps, ddpm_step, sample
from ddpm.schedules import cosine_alphas_cumprod, cosine_betas, linear_betas
from ddpm.timesteps import lognormal_timestep_probs

T = 1000


@pytest.fixture(params=["linear", "cosine"])
def diffusion(request):
    betas = linear_betas(T) if request.param == "linear" else cosine_betas(T)
    return GaussianDiffusion(betas, "eps")


def test_linear_schedule_endpoints():
    betas = linear_betas(T)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.all(np.diff(betas) > 0)
    # a shorter chain is rescaled so it still ends near pure noise
    assert np.prod(1 - linear_betas(100)) < 1e-4


def test_cosine_alphas_cumprod_matches_formula():
    s = 0.008
    d = GaussianDiffusion(cosine_betas(T, s), "eps")
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


# ---------------------------------------------------------------------------- DDPM and DDIM steps
def test_one_ddpm_step_matches_ho_et_al_equation(diffusion):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, sigma_t^2 = beta_t."""
    torch.manual_seed(2)
    xt = torch.randn(4, 2, dtype=torch.float64)
    eps = torch.randn(4, 2, dtype=torch.float64)
    model = lambda x, t: eps  # noqa: E731  a fixed eps prediction
    for t in [1, 10, 400, 999]:
        gen = torch.Generator().manual_seed(t)
        got, _ = ddpm_step(model, diffusion, xt, t, generator=gen, variance="beta", clip_denoised=False)
        z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(t), dtype=xt.dtype)
        beta, alpha, abar = (diffusion.betas[t].item(), diffusion.alphas[t].item(),
                             diffusion.alphas_cumprod[t].item())
        expected = (xt - beta / math.sqrt(1 - abar) * eps) / math.sqrt(alpha) + math.sqrt(beta) * z
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # sigma^2 = beta~ gives the posterior variance instead; t = 0 adds no noise
    got0, _ = ddpm_step(model, diffusion, xt, 0, variance="beta_tilde", clip_denoised=False)
    expected0 = (xt - diffusion.betas[0].item() / math.sqrt(1 - diffusion.alphas_cumprod[0].item()) * eps) \
        / math.sqrt(diffusion.alphas[0].item())
    torch.testing.assert_close(got0, expected0)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    d = GaussianDiffusion(cosine_betas(100), "eps")
    model = lambda x, t: 0.1 * x  # noqa: E731
    noise = torch.randn(5, 1, 4, 4)
    run = lambda eta, seed: sample(model, d, noise.shape, sampler="ddim", steps=10, eta=eta,  # noqa: E731
                                   noise=noise, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(run(0.0, 0), run(0.0, 1), rtol=0, atol=0)
    assert not torch.allclose(run(1.0, 0), run(1.0, 1))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_one_ddim_step_matches_song_et_al_equation_12(diffusion, eta):
    """x_{t-1} = sqrt(a_{t-1}) (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) + sqrt(1 - a_{t-1} - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - a_{t-1}) / (1 - a_t)) sqrt(1 - a_t / a_{t-1}), with a = abar (Song et al. 2020)."""
    torch.manual_seed(6)
    xt, eps = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    model = lambda x, t: eps  # noqa: E731  a fixed eps prediction (diffusion predicts eps)
    for t, t_prev in [(999, 949), (500, 480), (20, 0), (10, -1)]:
        a_t = diffusion.alphas_cumprod[t].item()
        a_prev = diffusion.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
        z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(t), dtype=xt.dtype)
        expected = (math.sqrt(a_prev) * (xt - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
                    + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * z)
        got, _ = ddim_step(model, diffusion, xt, t, t_prev, eta=eta, clip_denoised=False,
                           generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_ddim_with_every_timestep_and_eta1_is_the_ddpm_step(diffusion):
    """With t_prev = t - 1 and eta = 1, sigma^2 is beta~_t and the DDIM update is the DDPM posterior step."""
    torch.manual_seed(7)
    xt = torch.randn(4, 2, dtype=torch.float64)
    model = lambda x, t: 0.3 * x + 0.1  # noqa: E731  any eps-model
    for t in [1, 2, 100, 500, 998]:
        ddim, _ = ddim_step(model, diffusion, xt, t, t - 1, eta=1.0, clip_denoised=False,
                            generator=torch.Generator().manual_seed(t))
        ddpm, _ = ddpm_step(model, diffusion, xt, t, variance="beta_tilde", clip_denoised=False,
                            generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(ddim, ddpm, rtol=1e-9, atol=1e-9)


def test_clip_denoised_clips_x0_and_the_posterior_mean_follows(diffusion):
    """clip_denoised (the default) clamps x0_hat to [-1, 1] before the posterior mean is formed."""
    xt = torch.tensor([[3.0, -0.2]], dtype=torch.float64)
    t = 400
    abar = diffusion.alphas_cumprod[t].item()
    eps = torch.tensor([[-2.5, 0.1]], dtype=torch.float64)  # x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
    model = lambda x, tt: eps  # noqa: E731
    x0_raw = (xt - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    assert x0_raw[0, 0] > 1 and -1 < x0_raw[0, 1] < 1
    tt = torch.tensor([t])
    mean, _, x0 = diffusion.p_mean_variance(model(xt, tt), xt, tt, clip_denoised=True)
    torch.testing.assert_close(x0, x0_raw.clamp(-1, 1))
    beta, alpha, abar_prev = (diffusion.betas[t].item(), diffusion.alphas[t].item(),
                              diffusion.alphas_cumprod[t - 1].item())
    expected_mean = (math.sqrt(abar_prev) * beta / (1 - abar) * x0_raw.clamp(-1, 1)
                     + math.sqrt(alpha) * (1 - abar_prev) / (1 - abar) * xt)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=1e-12)
    # the DDIM step uses the clipped x0 and the eps that goes with it
    got, x0_step = ddim_step(model, diffusion, xt, t, t - 1, eta=0.0, clip_denoised=True)
    torch.testing.assert_close(x0_step, x0_raw.clamp(-1, 1))
    eps_clipped = (xt - math.sqrt(abar) * x0_raw.clamp(-1, 1)) / math.sqrt(1 - abar)
    torch.testing.assert_close(got, math.sqrt(abar_prev) * x0_raw.clamp(-1, 1)
                               + math.sqrt(1 - abar_prev) * eps_clipped, rtol=1e-12, atol=1e-12)


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 10) == list(range(900, -1, -100))
    assert len(ddim_timesteps(1000, 50)) == 50 and len(ddim_timesteps(1000, 300)) == 300
    assert ddim_timesteps(20, 20) == list(range(19, -1, -1))
    with pytest.raises(ValueError, match="100 sampling steps on a 20-step chain"):
        ddim_timesteps(20, 100)


TARGETS = {  # each parameterisation's regression target, written out from its paper
    "eps": lambda x0, eps, abar: eps,  # Ho et al. 2020
    "v": lambda x0, eps, abar: abar.sqrt() * eps - (1 - abar).sqrt() * x0,  # Salimans & Ho 2022
    "x0": lambda x0, eps, abar: x0,
}


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_loss_is_the_mse_to_the_papers_target(prediction):
    """L_simple = mean |target - output|^2: zero for the paper's target (and for no other
    parameterisation's target), and exactly mean(delta^2) for output = target + delta."""
    d = GaussianDiffusion(cosine_betas(100), prediction=prediction)
    torch.manual_seed(8)
    x0 = torch.rand(6, 1, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 30, 50, 70, 99])
    abar = d.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    for name, target in TARGETS.items():
        loss = d.training_loss(lambda x, tt: target(x0, noise, abar), x0, t, noise).item()  # noqa: B023
        assert (loss == pytest.approx(0.0, abs=1e-12)) == (name == prediction)
    delta = torch.randn_like(x0)
    wrong = lambda x, tt: TARGETS[prediction](x0, noise, abar) + delta  # noqa: E731
    assert d.training_loss(wrong, x0, t, noise).item() == pytest.approx(delta.square().mean().item(), rel=1e-6)
    # and the paper's target maps back to x0 and eps
    x_t = d.q_sample(x0, t, noise)
    x0_hat, eps_hat = d.predict_x0_eps(TARGETS[prediction](x0, noise, abar), x_t, t, clip_denoised=False)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, noise)


# ---------------------------------------------------------------------------- min-SNR weighting
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_min_snr_loss_is_min_snr_times_the_x0_error(prediction):
    """Hang et al. 2023: the loss is min(SNR_t, gamma) |x0_hat - x0|^2, whatever the network predicts."""
    d = GaussianDiffusion(cosine_betas(100), prediction=prediction)
    torch.manual_seed(3)
    x0 = torch.rand(8, 1, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 5, 20, 40, 60, 80, 95, 99])
    output = torch.randn_like(x0)  # an arbitrary (wrong) prediction
    model = lambda x, tt: output  # noqa: E731
    gamma = 5.0
    got = d.training_loss(model, x0, t, noise, min_snr_gamma=gamma)

    x_t = d.q_sample(x0, t, noise)
    x0_hat, _ = d.predict_x0_eps(output, x_t, t, clip_denoised=False)
    abar = d.alphas_cumprod[t]
    snr = abar / (1 - abar)
    x0_error = (x0_hat - x0).square().flatten(1).mean(1)
    expected = (torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)) * x0_error).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # without the weighting it is L_simple, the plain MSE of the target
    plain = (output - d.training_target(x0, t, noise)).square().mean()
    assert d.training_loss(model, x0, t, noise).item() == pytest.approx(plain.item(), rel=1e-6)


# ---------------------------------------------------------------------------- EDM's noise levels
def test_lognormal_timestep_probs_are_edm_noise_levels_rounded_to_the_chain():
    """Draws of ln sigma ~ N(P_mean, P_std^2), each rounded to the nearest ln sigma_t, land on t as often as
    lognormal_timestep_probs says."""
    d = GaussianDiffusion(cosine_betas(T), "eps")
    p_mean, p_std = -1.2, 1.2
    probs = lognormal_timestep_probs(d, p_mean, p_std)
    assert probs.shape == (T,) and probs.sum().item() == pytest.approx(1.0, abs=1e-12)

    log_sigma = 0.5 * np.log((1 - d.alphas_cumprod.numpy()) / d.alphas_cumprod.numpy())
    draws = np.random.default_rng(0).normal(p_mean, p_std, 2_000_000)
    above = np.clip(np.searchsorted(log_sigma, draws), 1, T - 1)
    nearest = np.where(draws - log_sigma[above - 1] < log_sigma[above] - draws, above - 1, above)
    empirical = np.bincount(nearest, minlength=T) / len(draws)
    np.testing.assert_allclose(empirical, probs.numpy(), atol=3e-4)  # binomial sd <= 4.3e-5 per bin
    # the median noise level is exp(P_mean): SNR = 1 / sigma^2 = exp(2.4) at the chain's median t
    median_t = int(np.searchsorted(probs.cumsum(0).numpy(), 0.5))
    assert math.exp(log_sigma[median_t - 1]) < math.exp(p_mean) < math.exp(log_sigma[median_t + 1])


def test_edm_preconditioning_with_unit_sigma_data_is_v_prediction():
    """Karras et al. 2022, Table 1: D(x; sigma) = c_skip x + c_out F(c_in x) and the loss lambda |D - x0|^2,
    with x = x_t / sqrt(abar_t), sigma^2 = (1 - abar_t) / abar_t and sigma_data = 1, are the v-prediction
    x0_hat (F = -v_hat) and the unweighted v loss: the claim in lognormal_timestep_probs' docstring."""
    d = GaussianDiffusion(cosine_betas(T), prediction="v")
    torch.manual_seed(0)
    x0 = torch.rand(6, 1, 4, 4, dtype=torch.float64) * 2 - 1
    noise, v_hat = torch.randn_like(x0), torch.randn_like(x0)
    t = torch.tensor([0, 100, 300, 500, 700, 990])
    x_t = d.q_sample(x0, t, noise)
    abar = d.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    sigma, sigma_data = ((1 - abar) / abar).sqrt(), 1.0
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    x = x_t / abar.sqrt()
    torch.testing.assert_close(c_in * x, x_t)  # F sees the VP chain's x_t
    edm_x0 = c_skip * x + c_out * -v_hat
    torch.testing.assert_close(edm_x0, d.predict_x0_from_v(x_t, t, v_hat))
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    edm_loss = (weight * (edm_x0 - x0).square()).mean()
    assert d.training_loss(lambda *_: v_hat, x0, t, noise).item() == pytest.approx(edm_loss.item(), rel=1e-6)
