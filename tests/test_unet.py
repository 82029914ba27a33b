"""The U-Net: shapes for every supported input, time conditioning, SDPA attention."""

import pytest
import torch
import torch.nn.functional as F

from ddpm.config.training import ModelConfig
from ddpm.unet import Dropout, UNet, timestep_embedding


@pytest.mark.parametrize("size, channels, mult, attn", [
    (28, 1, (1, 2, 2), (7,)), (32, 3, (1, 2, 2, 2), (16,)), (64, 3, (1, 2, 2, 2), (16, 8)), (32, 1, (1, 2), ()),
])
def test_output_shape_matches_input(size, channels, mult, attn):
    cfg = ModelConfig(base_channels=8, channel_mult=mult, attention_resolutions=attn, norm_groups=4, num_heads=2)
    model = UNet(cfg, size, channels)
    x = torch.randn(2, channels, size, size)
    assert model(x, torch.tensor([0, 999])).shape == x.shape


def test_timestep_changes_the_output_once_trained_weights_are_nonzero():
    torch.manual_seed(0)
    model = UNet(ModelConfig(base_channels=8, norm_groups=4), 28, 1)
    x = torch.randn(1, 1, 28, 28)
    assert torch.count_nonzero(model(x, torch.tensor([5]))) == 0  # zero-initialised output conv
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model.eval()
    assert not torch.allclose(model(x, torch.tensor([5])), model(x, torch.tensor([500])))


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0, 1]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(emb[1, 0], torch.sin(torch.tensor(1.0)))


def test_attention_goes_through_sdpa(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    cfg = ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(14,), norm_groups=4, num_heads=2)
    UNet(cfg, 28, 1)(torch.randn(3, 1, 28, 28), torch.tensor([1, 2, 3]))
    # (batch, heads, tokens, head_dim): one call per block at 14x14 (1 down + 2 up) plus the middle
    assert calls == [(3, 2, 14 * 14, 8)] * 4


def test_cpu_dropout_keeps_a_bernoulli_share_scaled_by_one_over_keep():
    torch.manual_seed(0)
    drop, x = Dropout(0.25), torch.ones(200_000)
    y = drop(x)
    assert y.unique().tolist() == [0.0, pytest.approx(1 / 0.75)]
    assert (y > 0).float().mean().item() == pytest.approx(0.75, abs=0.005)  # 0.005 is ~5 sigma
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    g = torch.ones(1000, requires_grad=True)
    out = drop(g)
    out.sum().backward()
    assert torch.equal(g.grad, out.detach())  # the gradient is the same mask times 1 / (1 - p)
    drop.eval()
    assert torch.equal(drop(x), x)


@pytest.mark.parametrize("scale_shift_norm", [False, True])
def test_a_res_block_adds_the_embedding_or_scales_and_shifts_the_norm_by_it(scale_shift_norm):
    """Ho et al.'s block adds the embedding before the second GroupNorm; AdaGN (guided-diffusion's ResBlock)
    applies it after: GroupNorm(h) (1 + scale) + shift."""
    from ddpm.unet import ResBlock

    torch.manual_seed(0)
    block = ResBlock(8, 8, 16, dropout=0.0, groups=4, scale_shift_norm=scale_shift_norm).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, temb = torch.randn(2, 8, 5, 5), torch.randn(2, 16)
    h = block.conv1(F.silu(block.norm1(x)))
    emb = block.temb_proj(F.silu(temb))[:, :, None, None]
    if scale_shift_norm:
        h = block.norm2(h) * (1 + emb[:, :8]) + emb[:, 8:]
    else:
        h = block.norm2(h + emb)
    torch.testing.assert_close(block(x, temb), x + block.conv2(F.silu(h)))


def test_learned_variance_doubles_the_output_channels():
    cfg = ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(), norm_groups=4, learn_sigma=True,
                      scale_shift_norm=True)
    x = torch.randn(2, 3, 16, 16)
    assert UNet(cfg, 16, 3)(x, torch.tensor([0, 9])).shape == (2, 6, 16, 16)
