"""The variational bound: its two densities against torch.distributions and scipy, the whole bound against an
analytic computation on Gaussian data, the learned variance range, the hybrid loss's stop-gradient, the
stratified estimator and the importance sampler."""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from ddpm.diffusion import GaussianDiffusion
from ddpm.likelihood import bits_per_dim, stratified_timesteps
from ddpm.losses import discretized_gaussian_log_likelihood, normal_kl
from ddpm.schedules import cosine_betas
from ddpm.timesteps import LossSecondMomentTimesteps

GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0  # the 8-bit values in [-1, 1]


def test_normal_kl_is_torch_distributions_kl():
    gen = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                                 torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mean, scale", [(0.1, 0.05), (-0.97, 0.3), (0.6, 1e-3), (0.0, 2.0)])
def test_discretized_decoder_is_the_normal_cdf_over_each_bin_and_sums_to_one(mean, scale):
    log_p = discretized_gaussian_log_likelihood(GRID, torch.full_like(GRID, mean), torch.full_like(GRID, math.log(scale)))
    edges = np.concatenate([[-np.inf], GRID.numpy()[:-1] + 1 / 255, [np.inf]])
    cdf = stats.norm.cdf(edges, loc=mean, scale=scale)
    expected = cdf[1:] - cdf[:-1]
    big = expected > 1e-300  # where float64 holds the mass at all; log_p keeps going in the far tails
    np.testing.assert_allclose(log_p.exp().numpy()[big], expected[big], rtol=1e-9, atol=1e-15)
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.isfinite(log_p).all()  # no bin's log-probability is cut off at a floor


# ---------------------------------------------------------------------------- the whole bound on Gaussian data
MU, S, TIMESTEPS = 0.1, 0.3, 40


def gaussian_denoiser(d: GaussianDiffusion):
    """The exact reverse process of continuous N(MU, S^2) data, as an x0-predicting network with learned variance:
    x0_hat = E[x0 | x_t] and sigma_t^2 = beta~_t + coef1^2 Var[x0 | x_t], both linear-Gaussian in closed form."""
    abar = d.alphas_cumprod
    gain = S**2 * abar.sqrt() / (abar * S**2 + 1 - abar)
    var_x0 = S**2 * (1 - abar) / (abar * S**2 + 1 - abar)
    log_var = torch.log(d.posterior_variance.clamp(min=0) + d.posterior_mean_coef1**2 * var_x0)
    u = (log_var - d.posterior_log_variance_clipped) / (d.log_betas - d.posterior_log_variance_clipped)

    def model(x_t, t):
        shape = (-1, 1, 1, 1)
        x0_hat = MU + gain[t].view(shape) * (x_t - abar[t].sqrt().view(shape) * MU)
        return torch.cat([x0_hat, (2 * u[t] - 1).view(shape).expand_as(x_t)], dim=1)

    return model, gain, log_var


def analytic_bound_nats(d: GaussianDiffusion, gain, log_var) -> np.ndarray:
    """E_q[L] for each 8-bit value x0 under the Gaussian denoiser, independently of the project's code: the KL
    terms are Gaussian expectations of a quadratic in x_t, the decoder a Gauss-Hermite quadrature of scipy's
    log normal CDF over the bin, the prior a KL of normals."""
    abar, c1, c2 = (a.numpy() for a in (d.alphas_cumprod, d.posterior_mean_coef1, d.posterior_mean_coef2))
    gain, sigma2, x0 = gain.numpy(), np.exp(log_var.numpy()), GRID.numpy()
    post_var = d.posterior_variance.numpy()
    total = np.zeros_like(x0)
    for t in range(1, d.num_timesteps):  # p's mean is a x_t + b; q's posterior mean c1 x0 + c2 x_t
        a, b = c1[t] * gain[t] + c2[t], c1[t] * (MU - gain[t] * math.sqrt(abar[t]) * MU)
        mean_gap = c1[t] * x0 - b + (c2[t] - a) * math.sqrt(abar[t]) * x0
        e_sq = mean_gap**2 + (c2[t] - a) ** 2 * (1 - abar[t])
        total += 0.5 * (np.log(sigma2[t] / post_var[t]) + post_var[t] / sigma2[t] - 1 + e_sq / sigma2[t])
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)  # E over z ~ N(0, 1)
    x1 = math.sqrt(abar[0]) * x0[:, None] + math.sqrt(1 - abar[0]) * nodes[None]
    mean = MU + gain[0] * (x1 - math.sqrt(abar[0]) * MU)  # at t = 0 the posterior mean is x0_hat
    lo = np.where(x0[:, None] < -0.999, -np.inf, x0[:, None] - 1 / 255)
    hi = np.where(x0[:, None] > 0.999, np.inf, x0[:, None] + 1 / 255)
    lo, hi = (lo - mean) / math.sqrt(sigma2[0]), (hi - mean) / math.sqrt(sigma2[0])
    flip = lo > 0  # the mass on the side of 0 where both CDFs are small, in logs: far nodes keep their digits
    lo, hi = np.where(flip, -hi, lo), np.where(flip, -lo, hi)
    with np.errstate(divide="ignore"):  # log_ndtr(-inf) = -inf at the outer bins' open ends
        log_hi, log_lo = special.log_ndtr(hi), special.log_ndtr(lo)
    log_mass = log_hi + np.log(-np.expm1(log_lo - log_hi))
    total += -(log_mass * weights).sum(1) / weights.sum()
    var_T = 1 - abar[-1]
    total += 0.5 * (-np.log(var_T) + var_T + abar[-1] * x0**2 - 1)
    return total


def test_the_bound_of_the_exact_gaussian_denoiser_is_the_datas_discretized_nll_within_its_gap():
    """On 8-bit data discretized from N(MU, S^2), the project's bits/dim for the exact Gaussian reverse process
    equals the analytic bound E_q[L] of the same pixels, and that lies between the pixels' exact discretized NLL
    (-log2 of their bin probabilities: no model does better on average) and it plus the gap. The gap,
    E_q[L] - NLL = E_x0 KL(q(x_{1:T} | x_0) || p(x_{1:T} | x_0)) + KL(P_data || P_model) >= 0, is there because
    the model is the reverse process of the continuous Gaussian, while the data is 256 spikes that the chain
    resolves where sigma_t falls below the bin width; here it is 0.0012 bits/dim."""
    d = GaussianDiffusion(cosine_betas(TIMESTEPS), "x0", learn_sigma=True)
    model, gain, log_var = gaussian_denoiser(d)
    edges = np.concatenate([[-np.inf], GRID.numpy()[:-1] + 1 / 255, [np.inf]])
    p_data = np.diff(stats.norm.cdf(edges, MU, S))
    bound_bits, nll_bits = analytic_bound_nats(d, gain, log_var) / math.log(2), -np.log2(p_data)

    gen = torch.Generator().manual_seed(0)
    pixels = torch.multinomial(torch.from_numpy(p_data), 64 * 32 * 32, replacement=True, generator=gen)
    bpd = bits_per_dim(model, d, GRID[pixels].reshape(64, 1, 32, 32), clip_denoised=False, generator=gen)
    per_image = lambda per_value: per_value[pixels.numpy()].reshape(64, -1).mean(1)  # noqa: E731
    analytic, nll = per_image(bound_bits), per_image(nll_bits)
    error = bpd["total"].numpy() - analytic  # the estimate's noise alone: the pixels' own bound subtracted
    se = error.std() / 8
    assert abs(error.mean()) < 4 * se  # se: 0.005 bits/dim
    gap = (analytic - nll).mean()
    assert 0 < gap < 0.005
    assert -4 * se < (bpd["total"].numpy() - nll).mean() < gap + 4 * se
    torch.testing.assert_close(bpd["total"], bpd["prior"] + bpd["kl"] + bpd["decoder"])


def test_stratified_terms_are_an_unbiased_estimate_of_the_full_sum():
    d = GaussianDiffusion(cosine_betas(TIMESTEPS), "x0", learn_sigma=True)
    model, _, _ = gaussian_denoiser(d)
    x0 = GRID[torch.randint(0, 256, (1, 1, 8, 8), generator=torch.Generator().manual_seed(1))].expand(400, 1, 8, 8)
    full = bits_per_dim(model, d, x0, clip_denoised=False, generator=torch.Generator().manual_seed(2))["kl"]
    strided = bits_per_dim(model, d, x0, terms=5, clip_denoised=False, generator=torch.Generator().manual_seed(3))["kl"]
    se = (full.var() / 400 + strided.var() / 400).sqrt()
    assert abs(full.mean() - strided.mean()) < 4 * se
    runs = stratified_timesteps(TIMESTEPS, 5, 1000, torch.Generator().manual_seed(4))
    assert sum(length for _, length in runs) == TIMESTEPS - 1
    drawn = torch.stack([t for t, _ in runs])  # every t of 1..T-1 is drawn, each in its own run
    assert set(drawn.flatten().tolist()) == set(range(1, TIMESTEPS))


# ---------------------------------------------------------------------------- learned variance and the losses
def test_the_learned_range_runs_from_beta_tilde_to_beta():
    d = GaussianDiffusion(cosine_betas(100), "eps", learn_sigma=True)
    x, t = torch.zeros(3, 1, 2, 2, dtype=torch.float64), torch.tensor([1, 50, 99])
    for v, expected in ((-1.0, d.posterior_log_variance_clipped), (1.0, d.log_betas)):  # u = (v + 1) / 2 = 0, 1
        output = torch.cat([torch.zeros_like(x), torch.full_like(x, v)], dim=1)
        _, log_var, _ = d.p_mean_variance(output, x, t, clip_denoised=False)
        torch.testing.assert_close(log_var[:, 0, 0, 0], expected[t], rtol=1e-12, atol=0)
    beta, beta_tilde = d.betas[t], d.posterior_variance[t]
    output = torch.cat([torch.zeros_like(x), torch.zeros_like(x)], dim=1)  # u = 1/2: the geometric mean
    torch.testing.assert_close(d.p_mean_variance(output, x, t)[1][:, 0, 0, 0], 0.5 * torch.log(beta * beta_tilde))


class TwoHeads(torch.nn.Module):
    """A network whose prediction and variance values have their own parameters."""

    def __init__(self):
        super().__init__()
        self.mean_head, self.variance_head = torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1)

    def forward(self, x, t):
        return torch.cat([self.mean_head(x), torch.tanh(self.variance_head(x))], dim=1)


def test_hybrid_loss_trains_the_mean_by_l_simple_alone_and_the_variance_by_l_vlb():
    """The stop-gradient of Nichol & Dhariwal sec. 3.1: L_vlb inside L_hybrid reaches no parameter of the mean."""
    d = GaussianDiffusion(cosine_betas(100), "eps", learn_sigma=True)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(8, 1, 4, 4, generator=gen) * 2 - 1, torch.randn(8, 1, 4, 4, generator=gen)
    t = torch.randint(0, 100, (8,), generator=gen)
    net = TwoHeads()

    def grads(loss):
        net.zero_grad()
        d.training_losses(net, x0, t, noise, loss=loss).mean().backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]

    simple, hybrid, vlb = grads("simple"), grads("hybrid"), grads("vlb")
    for g_simple, g_hybrid in zip(simple[:2], hybrid[:2]):  # the mean head's weight and bias
        torch.testing.assert_close(g_hybrid, g_simple, rtol=0, atol=0)
    assert all(g.abs().sum() == 0 for g in simple[2:]) and all(g.abs().sum() > 0 for g in hybrid[2:])
    assert all(g.abs().sum() > 0 for g in vlb[:2])  # L_vlb alone trains the mean too
    vlb_terms = d.vb_terms_bpd(net(d.q_sample(x0, t, noise), t), x0, d.q_sample(x0, t, noise), t)
    torch.testing.assert_close(d.training_losses(net, x0, t, noise, loss="vlb").double(), 100 * vlb_terms,
                               rtol=1e-6, atol=0)


def test_importance_weights_make_the_expected_loss_the_uniform_one():
    sampler = LossSecondMomentTimesteps(20)
    gen = torch.Generator().manual_seed(0)
    losses = torch.rand(20, generator=gen, dtype=torch.float64) ** 3 * 10  # L_t, spread over 3 decades
    assert sampler.probs().eq(1 / 20).all()  # uniform until every t has its 10 losses
    for _ in range(10):
        sampler.update(torch.arange(20), losses)
    probs = sampler.probs()
    assert probs.sum().item() == pytest.approx(1.0) and probs.argmax() == losses.argmax()
    torch.testing.assert_close((probs * losses / (20 * probs)).sum(), losses.mean())  # E_p[w L] exactly
    torch.manual_seed(1)
    t, weights = sampler.sample(200_000, torch.device("cpu"))
    assert (weights.double() * losses[t]).mean().item() == pytest.approx(losses.mean().item(), rel=0.01)
    for extra in (100.0, 200.0):  # each t keeps its newest 10 losses, oldest first
        sampler.update(torch.tensor([3]), torch.tensor([extra]))
    torch.testing.assert_close(sampler.losses[3], torch.cat([losses[3].repeat(8), torch.tensor([100.0, 200.0],
                                                                                               dtype=torch.float64)]))
    restored = LossSecondMomentTimesteps(20)
    restored.load_state_dict(sampler.state_dict())
    torch.testing.assert_close(restored.probs(), sampler.probs(), rtol=0, atol=0)


def test_the_prior_term_is_the_kl_of_q_x_T_from_the_standard_normal():
    from ddpm.likelihood import prior_bpd
    from ddpm.schedules import linear_betas

    d = GaussianDiffusion(linear_betas(10), "eps")  # a short chain: abar_T is far from 0
    x0 = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    abar = d.alphas_cumprod[-1].item()
    expected = 0.5 * (-math.log(1 - abar) + (1 - abar) + abar * 0.25 - 1) / math.log(2)
    assert prior_bpd(d, x0).item() == pytest.approx(expected, rel=1e-12)


def test_a_network_with_the_wrong_channel_count_is_one_line():
    from ddpm.errors import CheckpointError

    fixed = GaussianDiffusion(cosine_betas(10), "eps")
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(CheckpointError, match=r"the network gives 2 channels for 1-channel images, expected 1: "
                                              r"model\.learn_sigma does not match the checkpoint"):
        fixed.p_mean_variance(torch.zeros(1, 2, 2, 2), x, torch.tensor([3]))
