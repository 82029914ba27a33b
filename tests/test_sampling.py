"""Batch generation (ddpm.sampling.generate): exactly num_samples images in any batching, and a diverged
model is one clear error instead of black images."""

import numpy as np
import pytest
import torch

from ddpm.config.groups import DiffusionConfig, ModelConfig, SampleConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError
from ddpm.sampling import generate
from ddpm.unet import UNet

MODEL = ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(), norm_groups=4, dropout=0.0,
                    num_classes=0)

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UNet(MODEL, image_size=8, channels=1)  # untrained: its images are noise, but deterministic noise

@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion.from_config(DiffusionConfig(timesteps=10))

def sample(model, diffusion, **settings):
    cfg = SampleConfig(**{"num_samples": 12, "steps": 4, "seed": 3, **settings})
    return generate(model, diffusion, cfg, progress=False)

@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_deterministic_samplers_give_the_same_images_in_any_batching(model, diffusion, sampler):
    """12 images in batches of 5, 5 and 2 are the 12 of one batch: every batch draws its x_T from the one
    seeded generator, in order, and nothing else is random."""
    whole = sample(model, diffusion, sampler=sampler, batch_size=12)
    uneven = sample(model, diffusion, sampler=sampler, batch_size=5)
    assert whole.shape == uneven.shape == (12, 8, 8, 1) and whole.dtype == np.uint8
    np.testing.assert_array_equal(uneven, whole)

@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 1.0), ("dpmpp_2m_sde", 0.0)])
def test_stochastic_samplers_repeat_per_batch_size_but_depend_on_it(model, diffusion, sampler, eta):
    """Each step's noise comes from the same generator as the batches' x_T, so batches of 5 draw the numbers in
    another order than one batch of 12: the images are reproducible for one batch_size, and change with it
    (which is why the served model defaults to the sample stage's batch_size)."""
    uneven = sample(model, diffusion, sampler=sampler, eta=eta, batch_size=5)
    assert uneven.shape == (12, 8, 8, 1)
    np.testing.assert_array_equal(sample(model, diffusion, sampler=sampler, eta=eta, batch_size=5), uneven)
    assert not np.array_equal(sample(model, diffusion, sampler=sampler, eta=eta, batch_size=12), uneven)

class DivergedUNet(UNet):
    """What a checkpoint trained into NaN weights predicts."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, float("nan"))

@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde"])
def test_a_model_that_predicts_nan_is_one_line_naming_the_fix(diffusion, sampler):
    diverged = DivergedUNet(MODEL, image_size=8, channels=1)
    cfg = SampleConfig(num_samples=3, sampler=sampler, steps=4, batch_size=2)
    with pytest.raises(CheckpointError) as info:
        generate(diverged, diffusion, cfg, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "NaN or inf" in message and "diverged" in message and "train.lr" in message
