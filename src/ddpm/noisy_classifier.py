"""The noise-aware classifier p(y | x_t, t) of classifier guidance (Dhariwal & Nichol 2021, sec. 4).

The network is guided-diffusion's EncoderUNetModel with pool="adaptive", built from the U-Net's own blocks
(ddpm.unet): the sinusoidal time embedding and its MLP, the U-Net's down path (residual blocks, self-attention at
`attention_resolutions`, stride-2 downsampling) and middle (ResBlock, AttnBlock, ResBlock), then GroupNorm, SiLU,
global average pooling and a linear head to the class logits. It is trained as guided-diffusion's
scripts/classifier_train.py trains it: cross-entropy on the true labels of x_t = q_sample(x_0, t, noise) with t
uniform on 0..T-1, AdamW; here with a cosine-annealed learning rate, and every draw from one seeded generator.

It is a different network, trained separately, from the domain classifier that scores the samples
(ddpm.evaluation.classifier): a metric never grades the model that steered the sampler. Its file is
ddpm.noisy_classifier_io's, the guidance that turns it into the samplers' `cond_fn` ddpm.classifier_guidance's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ddpm.batches import read_images
from ddpm.config.groups import NoisyClassifierConfig
from ddpm.data import to_model_input
from ddpm.diffusion import GaussianDiffusion
from ddpm.unet import AttnBlock, Downsample, ResBlock, timestep_embedding


class NoisyClassifier(nn.Module):
    """logits of p(y | x_t, t): images (B, C, H, W) at integer timesteps (B,) -> (B, num_classes)."""

    def __init__(self, cfg: NoisyClassifierConfig, image_size: int, channels: int, num_classes: int):
        super().__init__()
        self.cfg, self.image_size, self.channels, self.num_classes = cfg, image_size, channels, num_classes
        ch, groups = cfg.base_channels, cfg.norm_groups
        temb_ch = 4 * ch
        self.temb = nn.Sequential(nn.Linear(ch, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch))
        self.conv_in = nn.Conv2d(channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cur, res = ch, image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(ResBlock(cur, ch * mult, temb_ch, 0.0, groups))
                cur = ch * mult
                if res in cfg.attention_resolutions:
                    self.down.append(AttnBlock(cur, 1, groups))
            if level != len(cfg.channel_mult) - 1:
                self.down.append(Downsample(cur))
                res //= 2
        self.mid = nn.ModuleList([ResBlock(cur, cur, temb_ch, 0.0, groups), AttnBlock(cur, 1, groups),
                                  ResBlock(cur, cur, temb_ch, 0.0, groups)])
        self.norm_out = nn.GroupNorm(groups, cur)
        self.head = nn.Linear(cur, num_classes)
        # The residual branches start from PyTorch's default init, not from zero as the U-Net's (and guided-
        # diffusion's, trained for 150k+ steps) do: from zero, the classifier sat at chance for 3 of 10 epochs
        for block in self.modules():
            if isinstance(block, ResBlock):
                block.conv2.reset_parameters()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.temb(timestep_embedding(t, self.cfg.base_channels))
        h = self.conv_in(x)
        for layer in [*self.down, *self.mid]:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
        return self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))


@dataclass
class TrainedClassifier:
    model: NoisyClassifier
    epoch_losses: list[float]  # the mean training cross-entropy of each epoch


def train_noisy_classifier(images: np.ndarray, labels: np.ndarray, cfg: NoisyClassifierConfig,
                           diffusion: GaussianDiffusion, *, num_classes: int, seed: int = 0,
                           device: torch.device | str = "cpu", progress: bool = True,
                           max_steps: int | None = None) -> TrainedClassifier:
    """Cross-entropy on x_t = q_sample(x_0, t, noise), t uniform, from uint8 NHWC `images` and their labels.

    The weights come from torch.manual_seed(seed), the batch order, t and the noise from one generator seeded
    with it: one seed, one classifier. `max_steps` stops early (tests); the schedule is still the full run's.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = NoisyClassifier(cfg, images.shape[1], images.shape[-1], num_classes).to(device)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    per_epoch = max(1, math.ceil(len(images) / cfg.batch_size))
    total = cfg.epochs * per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    model.train()
    losses: list[float] = []
    steps = 0
    bar = tqdm(total=min(total, max_steps or total), desc="noisy classifier", disable=not progress,
               dynamic_ncols=True)
    for _ in range(cfg.epochs):
        perm, running, seen = torch.randperm(len(images), generator=gen), 0.0, 0
        for i in range(per_epoch):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x0, y = to_model_input(read_images(images, idx.numpy())), y_all[idx]  # the data set stays on disk
            t = torch.randint(0, diffusion.num_timesteps, (len(idx),), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            x_t = diffusion.q_sample(x0, t, noise).to(device)
            loss = F.cross_entropy(model(x_t, t.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running, seen, steps = running + loss.item() * len(idx), seen + len(idx), steps + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if max_steps is not None and steps >= max_steps:
                break
        losses.append(running / seen)
        if max_steps is not None and steps >= max_steps:
            break
    bar.close()
    return TrainedClassifier(model.eval(), losses)


@torch.no_grad()
def accuracy_at(model: NoisyClassifier, diffusion: GaussianDiffusion, images: np.ndarray, labels: np.ndarray,
                timesteps: list[int], *, seed: int = 0, batch_size: int = 500,
                device: torch.device | str = "cpu") -> dict[int, float]:
    """The share of held-out x_t = q_sample(x_0, t, noise) classified as their label, at each of `timesteps`
    (seeded noise: the same numbers every run)."""
    model.eval()
    out = {}
    x_all, y_all = to_model_input(torch.from_numpy(images)), torch.as_tensor(labels, dtype=torch.long)
    for t in timesteps:
        gen, correct = torch.Generator().manual_seed(seed + t), 0
        for i in range(0, len(x_all), batch_size):
            x0 = x_all[i:i + batch_size]
            tt = torch.full((len(x0),), t, dtype=torch.long)
            x_t = diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=gen)).to(device)
            correct += int((model(x_t, tt.to(device)).argmax(1).cpu() == y_all[i:i + batch_size]).sum())
        out[t] = correct / len(x_all)
    return out


def report_timesteps(timesteps: int) -> list[int]:
    """The timesteps the stage reports held-out accuracy at: 0, T/4, T/2 and 3T/4 (distinct, for a short chain)."""
    return sorted({0, timesteps // 4, timesteps // 2, 3 * timesteps // 4})
