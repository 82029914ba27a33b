"""Autoguidance (Karras et al. 2024): the guide weights training keeps, the guided prediction, the
samplers and stages that load it, and the errors."""

import dataclasses

import numpy as np
import pytest
import torch

from ddpm.checkpoints import load_ema_weights, save_checkpoint
from ddpm.config import Config, config_from_dict
from ddpm.config.groups import SampleConfig
from ddpm.config.training import DataConfig, DiffusionConfig, ModelConfig, TrainConfig
from ddpm.data import load_splits
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError, ConfigError
from ddpm.guidance import sampler_model
from ddpm.sampling import generate
from ddpm.snapshots import SnapshotStore
from ddpm.train import train
from ddpm.unet import UNet

CFG = Config(
    data=DataConfig(limit=200),
    model=ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(14,), norm_groups=4, num_classes=0),
    diffusion=DiffusionConfig(timesteps=50),
    train=TrainConfig(steps=8, batch_size=16, warmup_steps=2, log_every=2, checkpoint_every=3, precision="fp32",
                      autoguide_at=0.5),
)


@pytest.fixture(scope="module")
def images():
    return load_splits(CFG.data, seed=0).train.images


def unet(num_classes: int, seed: int) -> UNet:
    torch.manual_seed(seed)
    net = UNet(dataclasses.replace(CFG.model, attention_resolutions=(), num_classes=num_classes), 8, 1)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


@pytest.mark.parametrize("num_classes", [0, 10])
def test_the_sampler_model_is_one_plus_w_ema_minus_w_guide(num_classes):
    good, weak = unet(num_classes, 0), unet(num_classes, 1)
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([1, 20, 45])
    y = torch.tensor([3, 0, 9]) if num_classes else None
    with torch.no_grad():
        out = sampler_model(good, weak, autoguidance=1.5, labels=y)(x, t)
        torch.testing.assert_close(out, 2.5 * good(x, t, y) - 1.5 * weak(x, t, y))
        assert torch.equal(sampler_model(good, weak, labels=y)(x, t), good(x, t, y))  # w = 0: the EMA alone
        if num_classes:  # with classifier-free guidance on top: each model guided by its own null class
            both = sampler_model(good, weak, autoguidance=1.5, labels=y, guidance=2.0)(x, t)
            cfg = lambda m: 3.0 * m(x, t, y) - 2.0 * m(x, t, torch.full_like(y, 10))  # noqa: E731
            torch.testing.assert_close(both, 2.5 * cfg(good) - 1.5 * cfg(weak))


def test_training_keeps_the_ema_of_the_guide_step_and_resume_keeps_it(tmp_path, images):
    full = train(CFG, images, progress=False)
    at_guide_step = train(CFG, images, progress=False, max_steps=4)  # autoguide_at 0.5 of 8 steps
    assert at_guide_step.step == 4
    guide = full.checkpoint["guide"]
    assert guide.keys() == full.checkpoint["ema"].keys()
    for key, value in at_guide_step.checkpoint["ema"].items():
        torch.testing.assert_close(guide[key], value, rtol=0, atol=0)
    assert any(not torch.equal(guide[k], full.checkpoint["ema"][k]) for k in guide)
    # killed after the guide step (a snapshot at step 6) or before it (step 3): the resumed run keeps the same guide
    for stop in (6, 3):
        store = SnapshotStore(tmp_path / f"resume-{stop}")
        train(CFG, images, snapshots=store, progress=False, max_steps=stop)
        resumed = train(CFG, images, snapshots=store, progress=False)
        for key, value in guide.items():
            torch.testing.assert_close(resumed.checkpoint["guide"][key], value, rtol=0, atol=0)
    # without train.autoguide_at the checkpoint has no guide key at all: the default's bytes are as before
    plain = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, autoguide_at=None),
                                sample=dataclasses.replace(CFG.sample, autoguidance=0.0))
    assert "guide" not in train(plain, images, progress=False, max_steps=2).checkpoint


def test_sampling_with_autoguidance_uses_the_guide_and_w_zero_is_the_ema_alone(tmp_path, images):
    result = train(CFG, images, progress=False)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, result.checkpoint)
    ema, guide, trained = load_ema_weights(path)
    assert guide is not None and not ema.training and not guide.training
    diffusion = GaussianDiffusion.from_config(trained)
    cfg = SampleConfig(num_samples=4, steps=5, batch_size=4, seed=7, autoguidance=0.0)
    plain = generate(ema, diffusion, cfg, progress=False)
    auto = generate(ema, diffusion, dataclasses.replace(cfg, autoguidance=2.0), guide=guide, progress=False)
    assert plain.shape == auto.shape and not np.array_equal(plain, auto)
    # the guide is the step-4 EMA, so it differs from the final one, and w = 0 is the final EMA's bytes
    assert np.array_equal(generate(ema, diffusion, cfg, guide=guide, progress=False), plain)


def test_autoguidance_without_guide_weights_fails_clearly(tmp_path, images):
    plain = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, autoguide_at=None),
                                sample=dataclasses.replace(CFG.sample, autoguidance=0.0))
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, train(plain, images, progress=False, max_steps=2).checkpoint)
    ema, guide, trained = load_ema_weights(path)  # a run without a guide loads (its sampling defaults ask for none)
    assert trained.train.autoguide_at is None and trained.sample.autoguidance == 0.0 and isinstance(ema, UNet)
    assert guide is None
    diffusion = GaussianDiffusion.from_config(trained)
    with pytest.raises(CheckpointError, match=r"keeps no weights to autoguide with: set train\.autoguide_at"):
        generate(ema, diffusion, SampleConfig(num_samples=2, steps=2, autoguidance=1.0), progress=False)


@pytest.mark.parametrize("raw, match", [
    ({"sample": {"autoguidance": 1.0}, "train": {"autoguide_at": None}},
     r"sample\.autoguidance = 1\.0 guides with the earlier EMA weights that "
     r"train\.autoguide_at keeps, and it is null: set train\.autoguide_at"),
    ({"sample": {"autoguidance": -1}}, r"sample\.autoguidance = -1\.0 is out of range: expected >= 0"),
    ({"train": {"autoguide_at": 1.0}}, r"train\.autoguide_at = 1\.0 is out of range: expected null .* or in \(0, 1\)"),
])
def test_bad_autoguidance_settings_are_one_line_naming_the_key(raw, match):
    with pytest.raises(ConfigError, match=match) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)
