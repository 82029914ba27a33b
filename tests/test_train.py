"""Training: loss goes down, resume is exact, checkpoints load safely and fail clearly."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from ddpm.config import Config, DataConfig, DiffusionConfig, ModelConfig, TrainConfig
from ddpm.data import load_splits
from ddpm.errors import CheckpointError
from ddpm.train import BatchSampler, autocast_dtype, load_checkpoint, load_ema_model, save_checkpoint, train

CFG = Config(
    data=DataConfig(limit=200),
    model=ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(14,), norm_groups=4),
    diffusion=DiffusionConfig(timesteps=50),
    train=TrainConfig(steps=8, batch_size=16, warmup_steps=2, log_every=2, checkpoint_every=4, precision="fp32"),
)


@pytest.fixture(scope="module")
def images():
    return load_splits(CFG.data, seed=0).train.images


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, images):
    full = train(CFG, images, progress=False)
    path = tmp_path / "resume.pt"
    half = train(CFG, images, resume_path=path, progress=False, max_steps=4)
    assert half.step == 4 and load_checkpoint(path)["step"] == 4
    resumed = train(CFG, images, resume_path=path, progress=False)
    assert resumed.step == 8
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for a, b in zip(full.ema.parameters(), resumed.ema.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]


def test_a_snapshot_for_other_parameters_is_not_resumed(tmp_path, images):
    path = tmp_path / "resume.pt"
    train(CFG, images, resume_path=path, progress=False, max_steps=4)
    other = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, lr=5e-4))
    assert train(other, images, resume_path=path, progress=False, max_steps=2).step == 2


def test_loss_decreases(images):
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, steps=60, log_every=20, lr=3e-3))
    history = train(cfg, images, progress=False).history
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]


def test_divergence_fails_clearly_before_a_checkpoint_is_written(tmp_path, images):
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, lr=1e20, warmup_steps=0, log_every=8))
    with pytest.raises(FloatingPointError, match=r"training loss is nan in steps 1-4: lower train.lr"):
        train(cfg, images, resume_path=tmp_path / "resume.pt", progress=False)  # checks at the step-4 checkpoint
    assert not (tmp_path / "resume.pt").exists()


def test_ema_model_round_trips_through_the_checkpoint(tmp_path, images):
    result = train(CFG, images, progress=False)
    save_checkpoint(tmp_path / "c.pt", result.checkpoint)
    model, cfg = load_ema_model(tmp_path / "c.pt")
    assert cfg.training_dict() == CFG.training_dict()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 40])
    result.ema.eval()
    torch.testing.assert_close(model(x, t), result.ema(x, t))
    # EMA weights differ from the raw weights after training
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), result.model.parameters()))


def test_bad_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="not found: run the train stage"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a format-1 DDPM checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_batch_sampler_visits_every_image_once_per_epoch():
    s = BatchSampler(10, 4, seed=0)
    seen = torch.cat([s.next() for _ in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))


def test_precision_setting():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16


def test_bf16_autocast_trains(images):
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, precision="bf16", steps=2))
    result = train(cfg, images, progress=False)
    assert result.stats["precision"] == "bf16" and np.isfinite(result.stats["final_loss"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_matches_eager_and_saves_plain_weights(images):
    # train.compile is the GPU fast path; on CPU inductor builds C++ kernels (about 100 s here).
    # Without dropout both runs draw the same batches, t and noise, so the losses agree.
    cfg = dataclasses.replace(CFG, model=dataclasses.replace(CFG.model, dropout=0.0),
                              train=dataclasses.replace(CFG.train, steps=3, log_every=1))
    eager = train(cfg, images, progress=False)
    compiled = train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=True)), images,
                     progress=False)
    assert len(compiled.history) == 3
    np.testing.assert_allclose([h["loss"] for h in compiled.history], [h["loss"] for h in eager.history], rtol=1e-4)
    assert list(compiled.checkpoint["model"]) == list(eager.checkpoint["model"])  # no "_orig_mod." prefixes


def test_lr_schedule_warms_up_then_holds_or_anneals():
    from ddpm.train import lr_lambda

    constant, cosine = lr_lambda(10, 110, "constant"), lr_lambda(10, 110, "cosine")
    assert [constant(s) for s in (0, 4, 9, 50, 109)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    assert cosine(9) == 1.0 and cosine(10) == 1.0
    assert cosine(60) == pytest.approx(0.5) and cosine(110) == pytest.approx(0.0, abs=1e-12)
    assert all(cosine(s) >= cosine(s + 1) for s in range(10, 110))
