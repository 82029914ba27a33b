"""What train() does inside one or two steps, against closed forms: the EMA update, weight decay, gradient
clipping, min-SNR weighting, horizontal flips; and a checkpoint's EMA and guide weights load as themselves.

Each trains a tiny U-Net on 16 random 8x8 images for a step or two (benchmarks/mutants.py names the mutants
these tests kill)."""

import dataclasses

import numpy as np
import pytest
import torch

import ddpm.train
from ddpm.checkpoints import CHECKPOINT_FORMAT, load_ema_weights, save_checkpoint
from ddpm.config import Config
from ddpm.config.training import DiffusionConfig, ModelConfig, TrainConfig
from ddpm.data import to_model_input
from ddpm.diffusion import GaussianDiffusion
from ddpm.snapshots import SnapshotStore
from ddpm.train import train
from ddpm.unet import UNet

CFG = Config(
    model=ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(), norm_groups=4, num_classes=0,
                      dropout=0.0),
    diffusion=DiffusionConfig(timesteps=50),
    train=TrainConfig(steps=2, batch_size=16, warmup_steps=1, log_every=1, checkpoint_every=100, precision="fp32",
                      ema_sigma_rel=None, autoguide_at=None, lr=1e-2),
)


@pytest.fixture(scope="module")
def images():
    """16 different asymmetric images: a horizontal mirror of one is none of them."""
    return np.random.default_rng(0).integers(0, 256, size=(16, 8, 8, 1), dtype=np.uint8)


def run(images, max_steps=None, snapshots=None, **train_settings):
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, **train_settings))
    return train(cfg, images, progress=False, max_steps=max_steps, snapshots=snapshots)


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_the_ema_after_two_steps_is_decay_times_the_first_weights_plus_the_rest_times_the_second(images):
    """The first update copies the weights; the second is ema = d w_1 + (1 - d) w_2 for a constant decay d."""
    first = run(images, max_steps=1, ema_decay=0.9)
    for e, w in zip(params(first.ema), params(first.model)):
        torch.testing.assert_close(e, w, rtol=0, atol=0)
    both = run(images, ema_decay=0.9)
    for e, w1, w2 in zip(params(both.ema), params(first.model), params(both.model)):
        torch.testing.assert_close(e, 0.9 * w1 + 0.1 * w2, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(a, b) for a, b in zip(params(first.model), params(both.model)))


def test_weight_decay_shrinks_each_weight_by_lr_times_decay_on_top_of_adams_step(images):
    """AdamW (decoupled): w_1 = w_0 (1 - lr wd) - lr u, with the same Adam step u with or without decay."""
    start, plain = params(run(images, max_steps=0).model), params(run(images, max_steps=1).model)
    decayed = params(run(images, max_steps=1, weight_decay=0.5).model)
    lr = CFG.train.lr  # warm-up of one step: the first step runs at the full rate
    for w0, a, b in zip(start, plain, decayed):
        torch.testing.assert_close(a - b, lr * 0.5 * w0, rtol=1e-3, atol=1e-6)


def recorded_gradients(monkeypatch) -> list[torch.Tensor]:
    """The gradients the optimizer steps with, flattened into one vector per step."""
    seen, real = [], ddpm.train.build_optimizer

    def recording(parameters, lr, weight_decay):
        optimizer = real(parameters, lr, weight_decay)
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(torch.cat(
            [p.grad.detach().flatten().clone() for g in opt.param_groups for p in g["params"] if p.grad is not None])))
        return optimizer

    monkeypatch.setattr(ddpm.train, "build_optimizer", recording)
    return seen


def test_gradients_are_clipped_to_train_grad_clip_in_norm_and_keep_their_direction(monkeypatch, images):
    seen = recorded_gradients(monkeypatch)
    run(images, max_steps=1, grad_clip=1e9)
    raw = seen.pop()
    norm = torch.linalg.vector_norm(raw).item()
    assert norm > 0
    run(images, max_steps=1, grad_clip=norm / 4)
    clipped = seen.pop()
    assert torch.linalg.vector_norm(clipped).item() == pytest.approx(norm / 4, rel=1e-4)
    torch.testing.assert_close(clipped, raw / 4, rtol=1e-4, atol=1e-9)


def recorded_losses(monkeypatch, gamma: float | None) -> list[tuple[float, float, torch.Tensor]]:
    """Per step: the loss train() optimises, the min-SNR-gamma weighted MSE of the same batch computed here
    from the closed forms (the default v-prediction: target sqrt(abar) eps - sqrt(1 - abar) x0, weight
    min(SNR, gamma) / (SNR + 1)), and the batch's x0."""
    seen, real = [], GaussianDiffusion.training_loss

    def recording(self, model, x0, t, noise, **kwargs):
        with torch.no_grad():
            abar = torch.from_numpy(np.cumprod(1 - self.betas.numpy()))[t].float()[:, None, None, None]
            x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
            v = abar.sqrt() * noise - (1 - abar).sqrt() * x0
            mse = (model(x_t, t) - v).square().flatten(1).mean(1)
            snr = (abar / (1 - abar)).flatten()
            weight = torch.ones_like(snr) if gamma is None else snr.clamp(max=gamma) / (snr + 1)
            independent = (weight * mse).mean().item()
        loss = real(self, model, x0, t, noise, **kwargs)
        seen.append((loss.item(), independent, x0.detach().clone()))
        return loss

    monkeypatch.setattr(GaussianDiffusion, "training_loss", recording)
    return seen


@pytest.mark.parametrize("gamma", [None, 0.5])
def test_the_loss_train_optimises_is_the_min_snr_weighted_v_error(monkeypatch, images, gamma):
    seen = recorded_losses(monkeypatch, gamma)
    run(images, min_snr_gamma=gamma)
    assert len(seen) == 2
    assert CFG.diffusion.prediction == "v"
    for loss, independent, _ in seen:
        assert loss == pytest.approx(independent, rel=1e-5)


def test_flip_mirrors_images_left_to_right(monkeypatch, images):
    seen = recorded_losses(monkeypatch, None)
    run(images, max_steps=1, hflip=True)
    x0 = seen[0][2]
    data = to_model_input(torch.from_numpy(images))
    mirrored = 0
    for row in x0:
        as_is = any(torch.equal(row, image) for image in data)
        flipped = any(torch.equal(row, image.flip(-1)) for image in data)  # NCHW: W is the last axis
        assert as_is or flipped, "a training image is neither an image of the data nor its left-right mirror"
        mirrored += flipped
    assert 0 < mirrored < len(x0)  # 16 fair coins with this seed: some of each


def test_a_run_resumed_after_two_steps_ends_with_the_uninterrupted_runs_weights(tmp_path, images):
    """The optimizer's moments, the LR schedule, the batch order, the flips and the EMA are all resumed."""
    full = run(images, steps=4, hflip=True)
    store = SnapshotStore(tmp_path / "resume")
    run(images, max_steps=2, snapshots=store, steps=4, hflip=True)
    assert [p.name for p in store.paths()] == ["step-00000002.pt"]
    resumed = run(images, snapshots=store, steps=4, hflip=True)
    assert resumed.history == full.history
    for a, b in zip(params(resumed.model) + params(resumed.ema), params(full.model) + params(full.ema)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_checkpoint_loads_the_ema_and_its_guide_each_as_itself(tmp_path):
    """load_ema_weights: `ema` gets the checkpoint's EMA weights, `guide` the autoguidance guide's."""
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, autoguide_at=0.5))
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(UNet(cfg.model, cfg.data.image_size, cfg.data.channels))
    ema, guide = nets
    state = {"format": CHECKPOINT_FORMAT, "config": cfg.training_dict(),
             "ema": {f"module.{k}": v for k, v in ema.state_dict().items()} | {"n_averaged": torch.tensor(2)},
             "guide": guide.state_dict()}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_ema_weights(tmp_path / "c.pt")
    for net, want in ((loaded.ema, ema), (loaded.guide, guide)):
        for a, b in zip(net.parameters(), want.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
