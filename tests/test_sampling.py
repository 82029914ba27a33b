"""DPM-Solver++(2M) and its SDE against closed forms computed independently in float64 (DDPM and DDIM: in
tests/test_diffusion.py), the progressive loop that runs every sampler, and batch generation
(ddpm.sampling.generate): exactly num_samples images in any batching, and a diverged model is one clear error
instead of black images."""

import math

import numpy as np
import pytest
import torch

from ddpm.config import Config
from ddpm.config.groups import SampleConfig
from ddpm.config.training import DiffusionConfig, ModelConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError
from ddpm.samplers import (PerSampleGenerators, ddim_step, ddim_timesteps, dpmpp_2m_step, sample, sample_loop_progressive,
                           sample_seed, timestep_pairs)
from ddpm.sampling import generate
from ddpm.schedules import cosine_betas
from ddpm.unet import UNet


# ---------------------------------------------------------------------------- DPM-Solver++(2M)
def test_dpmpp_2m_first_and_second_step_by_hand():
    """Lu et al. 2022, Algorithm 2: the first step is first order (= DDIM, eta = 0), the second adds
    the finite-difference correction D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}."""
    d = GaussianDiffusion(cosine_betas(1000), prediction="x0")
    torch.manual_seed(4)
    x = torch.randn(3, 2, dtype=torch.float64)
    predictions = {600: torch.randn(3, 2, dtype=torch.float64), 400: torch.randn(3, 2, dtype=torch.float64)}
    model = lambda x_t, tt: predictions[int(tt[0])]  # noqa: E731

    def alpha_sigma_lambda(t):
        abar = d.alphas_cumprod[t].item()
        return math.sqrt(abar), math.sqrt(1 - abar), math.log(math.sqrt(abar) / math.sqrt(1 - abar))

    a6, s6, l6 = alpha_sigma_lambda(600)
    a4, s4, l4 = alpha_sigma_lambda(400)
    a2, s2, l2 = alpha_sigma_lambda(200)
    x1, x0_600 = dpmpp_2m_step(model, d, x, 600, 400, clip_denoised=False)
    state = (x0_600, 600)
    h1 = l4 - l6
    torch.testing.assert_close(x1, s4 / s6 * x - a4 * (math.exp(-h1) - 1) * predictions[600], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x1, ddim_step(model, d, x, 600, 400, eta=0.0, clip_denoised=False)[0])

    x2, _ = dpmpp_2m_step(model, d, x1, 400, 200, previous=state, clip_denoised=False)
    h2 = l2 - l4
    r = h1 / h2
    corrected = (1 + 1 / (2 * r)) * predictions[400] - 1 / (2 * r) * predictions[600]
    torch.testing.assert_close(x2, s2 / s4 * x1 - a2 * (math.exp(-h2) - 1) * corrected, rtol=1e-12, atol=1e-12)
    # the last two steps are first order: into t = 0, and from there to the data prediction (abar = 1)
    x0_step, _ = dpmpp_2m_step(model, d, x1, 400, 0, previous=state, clip_denoised=False)
    torch.testing.assert_close(x0_step, ddim_step(model, d, x1, 400, 0, eta=0.0, clip_denoised=False)[0])
    x_end, _ = dpmpp_2m_step(model, d, x2, 400, -1, previous=state, clip_denoised=False)
    torch.testing.assert_close(x_end, predictions[400])


def _gaussian_data_x0_model(d: GaussianDiffusion, mu: float, s: float):
    """E[x0 | x_t] for x0 ~ N(mu, s^2): the exact denoiser, so the samplers solve the exact PF-ODE."""
    def model(x_t, tt):
        abar = d.alphas_cumprod[tt].reshape(-1, *([1] * (x_t.dim() - 1)))
        return mu + abar.sqrt() * s**2 / (abar * s**2 + 1 - abar) * (x_t - abar.sqrt() * mu)
    return model


def test_dpmpp_2m_converges_to_the_probability_flow_ode_solution_faster_than_ddim():
    """For Gaussian data the PF-ODE keeps (x_t - sqrt(abar) mu) / sqrt(abar s^2 + 1 - abar) fixed, so
    its solution from x at t0 is mu + s (x - sqrt(abar_t0) mu) / sqrt(abar_t0 s^2 + 1 - abar_t0). Both
    samplers converge to it; DPM-Solver++(2M), a second-order method, with far fewer steps."""
    d = GaussianDiffusion(cosine_betas(1000), prediction="x0")
    mu, s = 0.3, 0.5
    model = _gaussian_data_x0_model(d, mu, s)
    x = torch.randn(256, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    errors = {}
    for sampler in ("ddim", "dpmpp_2m"):
        for steps in (10, 20, 100):
            abar0 = d.alphas_cumprod[ddim_timesteps(1000, steps)[0]].item()
            exact = mu + s * (x - math.sqrt(abar0) * mu) / math.sqrt(abar0 * s**2 + 1 - abar0)
            got = sample(model, d, x.shape, sampler=sampler, steps=steps, noise=x, clip_denoised=False)
            errors[sampler, steps] = (got - exact).abs().max().item()
    # measured: DDIM 0.19, 0.097, 0.020; DPM-Solver++(2M) 0.059, 0.0014, 0.0009
    for steps in (10, 20, 100):
        assert errors["dpmpp_2m", steps] < errors["ddim", steps] / 3
    assert errors["dpmpp_2m", 20] < 5e-3 and errors["ddim", 100] < 3e-2
    # DDIM is first order: 5x the steps cut its error about 5x
    assert 3 < errors["ddim", 20] / errors["ddim", 100] < 7


# ---------------------------------------------------------------------------- SDE-DPM-Solver++(2M)
def test_dpmpp_2m_sde_first_step_is_ddim_eta1_and_second_step_by_hand():
    """Lu et al. 2022, sec. 5: x_prev = (sigma_prev / sigma_t) e^-h x_t + alpha_prev (1 - e^-2h) D
    + sigma_prev sqrt(1 - e^-2h) z, with the data term D of DPM-Solver++(2M). Its first-order step has
    DDIM's eta = 1 mean and variance, so with the same noise it is DDIM's step exactly."""
    d = GaussianDiffusion(cosine_betas(1000), prediction="x0")
    torch.manual_seed(8)
    x = torch.randn(3, 2, dtype=torch.float64)
    predictions = {600: torch.randn(3, 2, dtype=torch.float64), 400: torch.randn(3, 2, dtype=torch.float64)}
    model = lambda x_t, tt: predictions[int(tt[0])]  # noqa: E731
    seeded = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731

    def alpha_sigma_lambda(t):
        abar = d.alphas_cumprod[t].item()
        return math.sqrt(abar), math.sqrt(1 - abar), math.log(math.sqrt(abar) / math.sqrt(1 - abar))

    (_, s6, l6), (a4, s4, l4), (a2, s2, l2) = alpha_sigma_lambda(600), alpha_sigma_lambda(400), alpha_sigma_lambda(200)
    x1, x0_600 = dpmpp_2m_step(model, d, x, 600, 400, sde=True, generator=seeded(1), clip_denoised=False)
    state = (x0_600, 600)
    h1 = l4 - l6
    z1 = torch.randn(x.shape, generator=seeded(1), dtype=x.dtype)
    expected1 = (s4 / s6 * math.exp(-h1) * x + a4 * (1 - math.exp(-2 * h1)) * predictions[600]
                 + s4 * math.sqrt(1 - math.exp(-2 * h1)) * z1)
    torch.testing.assert_close(x1, expected1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x1, ddim_step(model, d, x, 600, 400, eta=1.0, generator=seeded(1),
                                             clip_denoised=False)[0])

    x2, _ = dpmpp_2m_step(model, d, x1, 400, 200, previous=state, sde=True, generator=seeded(2), clip_denoised=False)
    h2 = l2 - l4
    r = h1 / h2
    corrected = (1 + 1 / (2 * r)) * predictions[400] - 1 / (2 * r) * predictions[600]
    z2 = torch.randn(x.shape, generator=seeded(2), dtype=x.dtype)
    expected2 = (s2 / s4 * math.exp(-h2) * x1 + a2 * (1 - math.exp(-2 * h2)) * corrected
                 + s2 * math.sqrt(1 - math.exp(-2 * h2)) * z2)
    torch.testing.assert_close(x2, expected2, rtol=1e-12, atol=1e-12)
    # the end of the chain is the data prediction, with no noise added
    x_end, _ = dpmpp_2m_step(model, d, x2, 400, -1, previous=state, sde=True, generator=seeded(3), clip_denoised=False)
    torch.testing.assert_close(x_end, predictions[400], rtol=0, atol=0)


def test_dpmpp_2m_sde_samples_the_data_distribution_closer_than_ddim_eta1():
    """With the exact denoiser of x0 ~ N(mu, s^2), the reverse SDE's samples are N(mu, s^2) whatever the
    start (it forgets that x_T ~ N(0, I) is not quite q(x_T)); its discretisations miss s by an error that
    shrinks with the steps. Measured (these 50,000 draws): std error DDIM eta = 1 -0.109 and -0.039 at 10 and
    40 steps; SDE-DPM-Solver++(2M) -0.013 and +0.010."""
    d = GaussianDiffusion(cosine_betas(1000), prediction="x0")
    mu, s = 0.3, 0.5
    model = _gaussian_data_x0_model(d, mu, s)
    errors = {}
    for sampler, eta in (("ddim", 1.0), ("dpmpp_2m_sde", 0.0)):
        for steps in (10, 40):
            x = sample(model, d, (50_000, 1), sampler=sampler, steps=steps, eta=eta, clip_denoised=False,
                       generator=torch.Generator().manual_seed(9))
            x = x.double()
            assert abs(x.mean().item() - mu) < 0.01, (sampler, steps, x.mean().item())
            errors[sampler, steps] = abs(x.std().item() - s)
    assert errors["dpmpp_2m_sde", 10] < errors["ddim", 10] / 4
    assert errors["dpmpp_2m_sde", 40] < errors["ddim", 40] / 2.5
    assert errors["dpmpp_2m_sde", 40] < 0.02 and errors["ddim", 40] < errors["ddim", 10] / 2


# ---------------------------------------------------------------------------- the progressive loop
X0_OF_OUTPUT = {  # x0 from each parameterisation's output, written out (Ho et al. 2020; Salimans & Ho 2022)
    "eps": lambda out, x_t, abar: (x_t - (1 - abar).sqrt() * out) / abar.sqrt(),
    "v": lambda out, x_t, abar: abar.sqrt() * x_t - (1 - abar).sqrt() * out,
    "x0": lambda out, x_t, abar: out,
}


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("sampler, steps, eta", [("ddpm", None, 0.0), ("ddim", 5, 1.0), ("dpmpp_2m", 5, 0.0),
                                                   ("dpmpp_2m_sde", 5, 0.0)])
def test_the_progressive_loop_ends_at_sample_and_yields_each_steps_x0_hat(prediction, sampler, steps, eta):
    """`sample` is the loop's last sample for the same seed; each step's x_t is the step before's sample (the
    first: the generator's first draw), and its x0_hat is the parameterisation's x0 of the model's output, clipped."""
    d = GaussianDiffusion(cosine_betas(20), prediction)
    model = lambda x, tt: 1.5 * x + 0.1 * tt.reshape(-1, 1, 1, 1)  # noqa: E731  depends on x_t and t
    shape, seeded = (3, 1, 4, 4), lambda: torch.Generator().manual_seed(4)  # noqa: E731
    settings = {"sampler": sampler, "steps": steps, "eta": eta, "clip_denoised": True}
    run = list(sample_loop_progressive(model, d, shape, generator=seeded(), **settings))
    torch.testing.assert_close(run[-1].sample, sample(model, d, shape, generator=seeded(), **settings), rtol=0, atol=0)
    assert [step.t for step in run] == [t for t, _ in timestep_pairs(20, sampler, steps)]
    torch.testing.assert_close(run[0].x_t, torch.randn(shape, generator=seeded()), rtol=0, atol=0)
    assert all(after.x_t is before.sample for before, after in zip(run, run[1:]))
    for step in run:
        abar = d.alphas_cumprod[step.t].float()
        x0 = X0_OF_OUTPUT[prediction](model(step.x_t, torch.full((3,), step.t)), step.x_t, abar).clamp(-1, 1)
        torch.testing.assert_close(step.x0_hat, x0)
    assert any((step.x0_hat.abs() == 1).any() for step in run)  # the clipping is exercised


# ---------------------------------------------------------------------------- batch generation
MODEL = ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(), norm_groups=4, dropout=0.0,
                    num_classes=0)

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UNet(MODEL, image_size=8, channels=1)  # untrained: its images are noise, but deterministic noise

@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion.from_config(Config(diffusion=DiffusionConfig(timesteps=10)))

def draw(model, diffusion, **settings):
    cfg = SampleConfig(**{"num_samples": 12, "steps": 4, "seed": 3, "autoguidance": 0.0, **settings})
    return generate(model, diffusion, cfg, progress=False)

@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("dpmpp_2m", 0.0), ("ddpm", 0.0), ("ddim", 1.0),
                                         ("dpmpp_2m_sde", 0.0)])
def test_every_sampler_gives_the_same_images_in_any_batching(model, diffusion, sampler, eta):
    """12 images in batches of 5, 5 and 2 are the 12 of one batch: image i draws x_T and every step's noise from
    its own generator, seeded by (seed, i), whatever batch it is in (so a split over processes draws them too)."""
    whole = draw(model, diffusion, sampler=sampler, eta=eta, batch_size=12)
    uneven = draw(model, diffusion, sampler=sampler, eta=eta, batch_size=5)
    assert whole.shape == uneven.shape == (12, 8, 8, 1) and whole.dtype == np.uint8
    np.testing.assert_array_equal(uneven, whole)
    assert len({whole[i].tobytes() for i in range(12)}) == 12  # twelve streams, not one repeated
    assert not np.array_equal(draw(model, diffusion, sampler=sampler, eta=eta, batch_size=5, seed=4), whole)


def test_per_sample_generators_draw_each_image_from_its_own_stream():
    gens = PerSampleGenerators(3, range(5, 8))
    noise = gens.randn((3, 2, 2), "cpu", torch.float32)
    for row, index in zip(noise, range(5, 8)):
        alone = torch.randn((2, 2), generator=torch.Generator().manual_seed(sample_seed(3, index)))
        torch.testing.assert_close(row, alone, rtol=0, atol=0)
    with pytest.raises(ValueError, match="a batch of 2 images drawn with generators for 3"):
        gens.randn((2, 2, 2), "cpu", torch.float32)

class DivergedUNet(UNet):
    """What a checkpoint trained into NaN weights predicts."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, float("nan"))

@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde"])
def test_a_model_that_predicts_nan_is_one_line_naming_the_fix(diffusion, sampler):
    diverged = DivergedUNet(MODEL, image_size=8, channels=1)
    cfg = SampleConfig(num_samples=3, sampler=sampler, steps=4, batch_size=2, autoguidance=0.0)
    with pytest.raises(CheckpointError) as info:
        generate(diverged, diffusion, cfg, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "NaN or inf" in message and "diverged" in message and "train.lr" in message
