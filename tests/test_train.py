"""Training: loss goes down, resume is exact, checkpoints load safely and fail clearly."""

import dataclasses
import logging
import os
import shutil
import signal

import numpy as np
import pytest
import torch

from ddpm.batches import BatchSampler
from ddpm.checkpoints import load_checkpoint, load_ema_weights, save_checkpoint
from ddpm.config import Config
from ddpm.config.training import DataConfig, DiffusionConfig, ModelConfig, TrainConfig
from ddpm.data import load_splits
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError
from ddpm.interrupts import TrainingInterrupted
from ddpm.runtime import autocast_dtype
from ddpm.snapshots import SnapshotStore
from ddpm.timesteps import lognormal_timestep_probs
from ddpm.train import train

CFG = Config(
    data=DataConfig(limit=200),
    model=ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(14,), norm_groups=4, num_classes=0),
    diffusion=DiffusionConfig(timesteps=50),
    train=TrainConfig(steps=8, batch_size=16, warmup_steps=2, log_every=2, checkpoint_every=4, precision="fp32"),
)


@pytest.fixture(scope="module")
def images():
    return load_splits(CFG.data, seed=0).train.images


def checkpoint_bytes(state: dict, path) -> bytes:
    save_checkpoint(path, state)
    return path.read_bytes()


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, images):
    # checkpoint_every 3 is not a multiple of log_every 2: the snapshot holds half a log window
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, checkpoint_every=3))
    full = train(cfg, images, progress=False)
    store = SnapshotStore(tmp_path / "resume")
    half = train(cfg, images, snapshots=store, progress=False, max_steps=5)
    assert half.step == 5 and [p.name for p in store.paths()] == ["step-00000005.pt", "step-00000003.pt"]
    resumed = train(cfg, images, snapshots=store, progress=False)
    assert resumed.step == 8 and resumed.history == full.history
    assert checkpoint_bytes(resumed.checkpoint, tmp_path / "a.pt") == checkpoint_bytes(full.checkpoint, tmp_path / "b.pt")


def test_resume_restores_the_importance_samplers_history(tmp_path, images):
    """L_vlb with importance-sampled t on a learned-variance model: the loss history that sets p_t is run state,
    so a run resumed after the sampler left its uniform warm-up writes the uninterrupted run's bytes."""
    cfg = dataclasses.replace(
        CFG, model=dataclasses.replace(CFG.model, learn_sigma=True), diffusion=DiffusionConfig(timesteps=10),
        train=dataclasses.replace(CFG.train, steps=24, checkpoint_every=5, loss="vlb", importance_sampling=True))
    full = train(cfg, images, progress=False)
    assert (full.checkpoint["timesteps"]["counts"] == 10).all()  # warm: p_t follows the losses
    store = SnapshotStore(tmp_path / "resume")
    assert train(cfg, images, snapshots=store, progress=False, max_steps=20).step == 20
    resumed = train(cfg, images, snapshots=store, progress=False)
    assert checkpoint_bytes(resumed.checkpoint, tmp_path / "a.pt") == checkpoint_bytes(full.checkpoint, tmp_path / "b.pt")


def test_snapshots_rotate_and_a_damaged_one_is_skipped_for_the_one_before(tmp_path, images, caplog):
    caplog.set_level(logging.INFO)
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, checkpoint_every=2, keep_snapshots=2))
    full = train(cfg, images, progress=False)
    store = SnapshotStore(tmp_path / "resume", keep=2)
    train(cfg, images, snapshots=store, progress=False, max_steps=6)
    newest, previous = store.paths()
    assert (newest.name, previous.name) == ("step-00000006.pt", "step-00000004.pt")  # step 2 was pruned
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    resumed = train(cfg, images, snapshots=store, progress=False)
    assert f"skipping snapshot {newest}: its SHA-256 differs" in caplog.text
    assert "resuming from" in caplog.text and str(previous) in caplog.text
    assert checkpoint_bytes(resumed.checkpoint, tmp_path / "a.pt") == checkpoint_bytes(full.checkpoint, tmp_path / "b.pt")


def test_a_snapshot_for_other_parameters_is_not_resumed(tmp_path, images, caplog):
    store = SnapshotStore(tmp_path / "resume")
    train(CFG, images, snapshots=store, progress=False, max_steps=4)
    other = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, lr=5e-4))
    assert train(other, images, snapshots=store, progress=False, max_steps=2).step == 2
    assert "it was written for other parameters" in caplog.text


def test_sigterm_stops_at_a_step_boundary_with_a_snapshot_and_the_run_resumes(tmp_path, images):
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, eval_every=3, eval_samples=4, eval_steps=2))
    full = train(cfg, images, progress=False)
    store = SnapshotStore(tmp_path / "resume")

    def preempting_probe(model, diffusion, device):  # the signal arrives in the middle of step 3's work
        os.kill(os.getpid(), signal.SIGTERM)
        return {"fid": 1.0, "confident": 0.5}

    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM at step 3; snapshot .*step-00000003.pt"):
        train(cfg, images, snapshots=store, probe=preempting_probe, progress=False)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
    resumed = train(cfg, images, snapshots=store, progress=False)
    assert resumed.step == 8 and resumed.history == full.history


def test_quality_probe_leaves_training_unchanged_and_keep_best_serves_the_best(tmp_path, images):
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, eval_every=2))
    scores = iter([3.0, 1.0, 2.0, 4.0])  # step 2, 4, 6, 8: the best is step 4
    probe = lambda model, diffusion, device: {"fid": next(scores), "confident": 0.5}
    plain = train(cfg, images, progress=False)
    probed = train(cfg, images, probe=probe, progress=False)
    assert [e["step"] for e in probed.evals] == [2, 4, 6, 8] and plain.history == probed.history
    for a, b in zip(plain.model.parameters(), probed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    scores = iter([3.0, 1.0, 2.0, 4.0])
    best_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, keep_best=True))
    kept = train(best_cfg, images, probe=lambda m, d, dev: {"fid": next(scores), "confident": 0.5}, progress=False)
    at_4 = train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=8)), images, progress=False,
                 max_steps=4)
    assert kept.stats["best_step"] == 4 and kept.checkpoint["best"] == {"step": 4, "fid": 1.0}
    for a, b in zip(kept.ema.parameters(), at_4.ema.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_power_ema_weights_the_run_as_edm2_says():
    """After n updates with beta_s = (1 - 1/s)^(gamma + 1), update s weighs (1 - beta_s)(s/n)^(gamma + 1),
    the weights sum to 1, and sigma_rel maps to gamma by EDM2's eq. 3 (sigma_rel 0.05 <-> gamma ~ 16.97)."""
    from ddpm.ema import ema_beta, power_ema_gamma

    gamma = power_ema_gamma(0.05)
    assert (gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)) == pytest.approx(0.05**2, rel=1e-9)
    assert gamma == pytest.approx(16.97, abs=0.01)
    n = 4000
    weights = np.zeros(n + 1)
    for s in range(1, n + 1):  # run the recursion on one-hot "parameters"
        beta = ema_beta(s, 0.0, gamma)
        weights *= beta
        weights[s] += 1 - beta
    closed = np.array([0.0] + [(1 - ema_beta(s, 0.0, gamma)) * (s / n) ** (gamma + 1) for s in range(1, n + 1)])
    np.testing.assert_allclose(weights, closed, rtol=1e-9, atol=1e-15)
    assert weights.sum() == pytest.approx(1.0, rel=1e-12)
    steps = np.arange(n + 1) / n
    mean = (weights * steps).sum()
    # sigma_rel is the profile's standard deviation in units of the run's length (EDM2, sec. 3.1)
    assert np.sqrt((weights * (steps - mean) ** 2).sum()) == pytest.approx(0.05, rel=0.01)


def test_loss_decreases(images):
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, steps=60, log_every=20, lr=3e-3))
    history = train(cfg, images, progress=False).history
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]


def test_lognormal_noise_draws_the_training_timesteps_from_edms_distribution(monkeypatch, images):
    drawn = {}
    real_loss = GaussianDiffusion.training_loss

    def recording_loss(self, model, x0, t, noise, **kwargs):
        drawn.setdefault("t", []).append(t)
        return real_loss(self, model, x0, t, noise, **kwargs)

    monkeypatch.setattr(GaussianDiffusion, "training_loss", recording_loss)
    timesteps = {}
    for noise_levels in (None, (-1.2, 1.2)):
        drawn.clear()
        cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, steps=40, lognormal_noise=noise_levels))
        train(cfg, images, progress=False)
        timesteps[noise_levels] = torch.cat(drawn["t"])
    uniform, lognormal = timesteps[None], timesteps[(-1.2, 1.2)]
    probs = lognormal_timestep_probs(GaussianDiffusion.from_config(CFG), -1.2, 1.2)
    for t, expected in ((uniform, torch.full((50,), 1 / 50, dtype=torch.float64)), (lognormal, probs)):
        # 640 draws of a 50-way categorical: their mean within 4 standard errors of the distribution's
        mean, var = (expected * torch.arange(50)).sum(), (expected * torch.arange(50) ** 2).sum()
        assert abs(t.double().mean() - mean) < 4 * ((var - mean**2) / len(t)).sqrt()
    assert lognormal.double().mean() < uniform.double().mean() - 5


def test_a_probe_before_the_first_loss_window_closes(images):
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, steps=3, log_every=3, eval_every=1))
    result = train(cfg, images, probe=lambda model, diffusion, device: {"fid": 1.0, "confident": 0.5}, progress=False)
    assert [e["step"] for e in result.evals] == [1, 2, 3] and len(result.history) == 1


def test_divergence_fails_clearly_before_a_snapshot_is_written(tmp_path, images):
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, lr=1e20, warmup_steps=0, log_every=8))
    store = SnapshotStore(tmp_path / "resume")
    with pytest.raises(FloatingPointError, match=r"training loss is nan in steps 1-4: lower train.lr"):
        train(cfg, images, snapshots=store, progress=False)  # checks at the step-4 snapshot
    assert store.paths() == []


def test_ema_model_round_trips_through_the_checkpoint(tmp_path, images):
    result = train(CFG, images, progress=False)
    save_checkpoint(tmp_path / "c.pt", result.checkpoint)
    model, _, cfg = load_ema_weights(tmp_path / "c.pt")
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


def test_auto_precision_is_fp32_on_every_cpu_kernel_setting(monkeypatch):
    assert autocast_dtype("auto", torch.device("cpu")) is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # what runtime.cpu_isa: avx2 sets
    assert autocast_dtype("auto", torch.device("cpu")) is None


@pytest.mark.parametrize("params, pinned", [("runtime: {cpu_isa: avx2}", True), ("seed: 0", False),
                                            ("runtime: {cpu_isa: native}", False), ("{not yaml", False)])
def test_stage_entry_points_set_the_cpu_kernels_before_torch_loads(tmp_path, params, pinned):
    import subprocess
    import sys

    from ddpm.config.groups import PORTABLE_CPU_ENV
    from tests.helpers import ROOT

    (tmp_path / "params.yaml").write_text(params)
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_CPU_ENV}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'src'}"
    code = ("import os, sys, pipeline; "
            "print(os.environ.get('ONEDNN_MAX_CPU_ISA'), os.environ.get('MKL_CBWR'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == (["AVX2", "AVX2", "False"] if pinned else ["None", "AUTO", "False"])


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
