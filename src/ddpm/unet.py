"""The DDPM U-Net (Ho et al. 2020, appendix B; a PixelCNN++-style backbone).

Residual blocks with GroupNorm and a projected sinusoidal time embedding, self-attention at the
configured resolutions (through `scaled_dot_product_attention`), dropout, a channel multiplier
per level, stride-2 convolutions down and nearest-neighbour + conv up. With base 128,
mult (1, 2, 2, 2), two blocks per level and attention at 16x16 it is the 35.7M-parameter
CIFAR-10 model of the paper.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ddpm.config.training import ModelConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (float) timesteps, as in the Transformer: [sin | cos]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask is drawn as random 31-bit integers >= round(p * 2^31).

    That is a Bernoulli(1 - p) mask (p rounded to a multiple of 2^-31), drawn faster on CPU than
    aten's `bernoulli_` or uniform floats (docs/results.md). On GPU, the fused native dropout
    kernel is already the fast path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        bits = torch.empty(x.shape, dtype=torch.int32).random_()  # uniform on [0, 2^31)
        keep = bits >= round(self.p * 2**31)
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


class ResBlock(nn.Module):
    """Two 3x3 convolutions and a skip, the embedding added between them (Ho et al.) or, with
    `scale_shift_norm`, applied as AdaGN: GroupNorm(h) (1 + scale) + shift (Dhariwal & Nichol 2021)."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int,
                 scale_shift_norm: bool = False):
        super().__init__()
        self.scale_shift_norm = scale_shift_norm
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, 2 * out_ch if scale_shift_norm else out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        emb = self.temb_proj(F.silu(temb))[:, :, None, None]
        if self.scale_shift_norm:
            scale, shift = emb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + emb)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    def __init__(self, ch: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        # (b, heads, tokens, head_dim) for scaled_dot_product_attention
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """eps_theta(x_t, t[, y]): images (B, C, H, W) in [-1, 1], integer timesteps (B,) and, with
    cfg.num_classes > 0, integer labels (B,) -> (B, C, H, W), or with cfg.learn_sigma (B, 2C, H, W): the
    prediction, then the variance values of ddpm.diffusion.

    A conditional U-Net adds a learned class embedding to the time embedding; label num_classes
    is the null class (no label: the unconditional model of classifier-free guidance), which is
    also what y = None means.
    """

    checkpoint_activations = False  # set by train.activation_checkpointing: memory for compute, the same numbers

    def __init__(self, cfg: ModelConfig, image_size: int, channels: int):
        super().__init__()
        self.cfg, self.image_size, self.channels = cfg, image_size, channels
        ch, groups = cfg.base_channels, cfg.norm_groups
        temb_ch = 4 * ch
        self.temb = nn.Sequential(nn.Linear(ch, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch))
        self.conv_in = nn.Conv2d(channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_chs, cur, res = [ch], ch, image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(self._block(cur, ch * mult, temb_ch, res))
                cur = ch * mult
                skip_chs.append(cur)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(Downsample(cur))
                skip_chs.append(cur)
                res //= 2

        self.mid = nn.ModuleList([
            ResBlock(cur, cur, temb_ch, cfg.dropout, groups, cfg.scale_shift_norm),
            AttnBlock(cur, cfg.num_heads, groups),
            ResBlock(cur, cur, temb_ch, cfg.dropout, groups, cfg.scale_shift_norm),
        ])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(self._block(cur + skip_chs.pop(), ch * mult, temb_ch, res))
                cur = ch * mult
            if level != 0:
                self.up.append(Upsample(cur))
                res *= 2

        self.norm_out = nn.GroupNorm(groups, cur)
        self.conv_out = zero_init(nn.Conv2d(cur, channels * (2 if cfg.learn_sigma else 1), 3, padding=1))
        # Created last, so that the layers above draw the same initial weights with or without classes;
        # an unconditional U-Net creates nothing and draws nothing more than before classes existed.
        if cfg.num_classes:
            self.class_emb = nn.Embedding(cfg.num_classes + 1, temb_ch)  # the last row: the null class

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def _block(self, in_ch: int, out_ch: int, temb_ch: int, res: int) -> nn.Module:
        block = ResBlock(in_ch, out_ch, temb_ch, self.cfg.dropout, self.cfg.norm_groups, self.cfg.scale_shift_norm)
        if res in self.cfg.attention_resolutions:
            return _ResAttn(block, AttnBlock(out_ch, self.cfg.num_heads, self.cfg.norm_groups))
        return block

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        temb = self.temb(timestep_embedding(t, self.cfg.base_channels))
        if self.num_classes:
            y = torch.full_like(t, self.num_classes, dtype=torch.long) if y is None else y
            temb = temb + self.class_emb(y)
        elif y is not None:
            raise ValueError("this U-Net is unconditional (model.num_classes = 0): it takes no labels")
        # train.activation_checkpointing: each block's activations recomputed in the backward pass, not kept
        block = partial(checkpoint, use_reentrant=False) if self.checkpoint_activations and self.training else _call
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else block(layer, h, temb)
            skips.append(h)
        h = block(self.mid[2], block(self.mid[1], block(self.mid[0], h, temb)), temb)
        for layer in self.up:
            h = layer(h) if isinstance(layer, Upsample) else block(layer, torch.cat([h, skips.pop()], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(h)))


def _call(layer: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    return layer(*args)


class _ResAttn(nn.Module):
    def __init__(self, res: ResBlock, attn: AttnBlock):
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, temb))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
