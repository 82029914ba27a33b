"""The report's pictures: the denoising trajectory is the configured sampler, and every figure's PNG bytes
are reproducible."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.config.groups import SampleConfig
from ddpm.config.training import ModelConfig
from ddpm.data import to_uint8_images
from ddpm.diffusion import GaussianDiffusion
from ddpm.report.figures import (
    save_coverage_figure,
    save_loss_figure,
    save_sampler_sweep_figure,
    save_training_quality_figure,
    save_trajectory_figure,
)
from ddpm.samplers import ddim_timesteps, sample
from ddpm.schedules import cosine_betas
from ddpm.trajectory import forward_trajectory, reverse_trajectory
from ddpm.unet import UNet


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = UNet(ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(), norm_groups=4), 28, 1)
    return model.eval(), GaussianDiffusion(cosine_betas(20), "v")


# ---------------------------------------------------------------------------- the trajectory
@pytest.mark.parametrize("sampler, steps, eta", [("ddim", 6, 1.0), ("dpmpp_2m", 6, 0.0), ("dpmpp_2m_sde", 6, 0.0),
                                                   ("ddpm", 20, 0.0)])
def test_reverse_trajectory_is_the_configured_sampler(small_model, sampler, steps, eta):
    """Its last x̂_0 is the sample ddpm.samplers.sample draws with the same seed (noise included)."""
    model, diffusion = small_model
    cfg = SampleConfig(sampler=sampler, steps=steps, eta=eta, seed=3)
    shape = (3, 1, 28, 28)
    traj = reverse_trajectory(model, diffusion, cfg, shape, columns=4, generator=torch.Generator().manual_seed(3))
    drawn = sample(model, diffusion, shape, sampler=sampler, steps=steps, eta=eta,
                   generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(traj.samples, to_uint8_images(drawn))
    np.testing.assert_array_equal(traj.x0_hat[:, -1], traj.samples)  # the last step lands on its x̂_0
    first = 19 if sampler == "ddpm" else ddim_timesteps(20, steps)[0]
    assert traj.timesteps[0] == first and traj.timesteps[-1] == 0 and len(traj.timesteps) == 4
    assert traj.timesteps == sorted(traj.timesteps, reverse=True)
    assert traj.x_t.shape == traj.x0_hat.shape == (3, 4, 28, 28, 1)
    noise = to_uint8_images(torch.randn(shape, generator=torch.Generator().manual_seed(3)))
    np.testing.assert_array_equal(traj.x_t[:, 0], noise)  # the first column is the starting noise x_T


def test_forward_trajectory_loses_the_image_as_t_rises(small_model):
    _, diffusion = small_model
    images = np.zeros((2, 28, 28, 1), dtype=np.uint8)
    images[:, 8:20, 12:16] = 255  # a bar on black
    rows = forward_trajectory(diffusion, images, [0, 5, 10, 15, 19], generator=torch.Generator().manual_seed(0))
    assert rows.shape == (2, 5, 28, 28, 1)
    corr = [np.corrcoef(rows[:, k].ravel().astype(float), images.ravel().astype(float))[0, 1] for k in range(5)]
    assert corr[0] > 0.95 and corr[-1] < 0.2
    assert all(a > b for a, b in zip(corr, corr[1:])), corr


# ---------------------------------------------------------------------------- figures
def png_text_chunks(data: bytes) -> list[bytes]:
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind in (b"tEXt", b"zTXt", b"iTXt", b"tIME"):
            chunks.append(kind + b" " + data[pos + 8:pos + 8 + length][:40])
        pos += 12 + length
    return chunks


def draw_every_figure(folder: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (2, 3, 28, 28, 1), dtype=np.uint8)
    sweep = [{"sampler": s, "steps": n, "space": "domain", "fid": 10.0 / n, "n_samples": 12, "fid_floor": 0.5,
              "n_floor": 12} for s, n in [("ddim", 10), ("ddim", 20), ("dpmpp_2m", 10), ("ddpm", 1000)]]
    save_loss_figure(folder / "loss.png", [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)])
    save_trajectory_figure(folder / "trajectory.png", forward=tiles, x_t=tiles, x0_hat=tiles[::-1],
                           timesteps=[9, 4, 0], sampler="ddim", real_classes=["0", "1"])
    save_sampler_sweep_figure(folder / "sweep.png", sweep)
    save_coverage_figure(folder / "coverage.png", {"0": {"samples": 0.6, "data": 0.5}, "1": {"samples": 0.4,
                                                                                             "data": 0.5}})
    save_training_quality_figure(folder / "quality.png", [{"step": 100, "fid": 9.0, "confident": 0.2},
                                                          {"step": 200, "fid": 5.0, "confident": 0.4}])
    save_training_quality_figure(folder / "quality_unmeasured.png", [])  # a declared output even when unmeasured
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_figures_have_reproducible_bytes_and_no_metadata(tmp_path):
    first = draw_every_figure(tmp_path / "a")
    second = draw_every_figure(tmp_path / "b")
    assert len(first) == 6 and first == second
    assert first["quality.png"] != first["quality_unmeasured.png"]
    for name, data in first.items():
        assert data.startswith(b"\x89PNG") and png_text_chunks(data) == [], name


def test_the_trajectory_rows_carry_the_data_sets_class_names(tmp_path):
    """Another data set's figure names its own classes, not "digit 1, 2"; a "$" in a name is text, not mathtext."""
    tiles = np.random.default_rng(0).integers(0, 256, (2, 3, 28, 28, 1), dtype=np.uint8)
    drawn = {}
    for names in (["0", "1"], ["airplane", "cat"], ["cost $5", "b"]):
        path = tmp_path / f"{names[0]}.png"
        save_trajectory_figure(path, forward=tiles, x_t=tiles, x0_hat=tiles, timesteps=[9, 4, 0], sampler="ddim",
                               real_classes=names)
        drawn[names[0]] = path.read_bytes()
    assert len(set(drawn.values())) == 3
