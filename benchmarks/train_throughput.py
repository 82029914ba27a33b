"""Training throughput: our U-Net + L_simple + AdamW step against diffusers and lucidrains.

Each peer is the tool a user would pick instead: diffusers' `UNet2DModel` + `DDPMScheduler`
and lucidrains' `denoising-diffusion-pytorch` `Unet` + `GaussianDiffusion`. All three run in
one process at matched parameter count (within 10%), input size, batch and precision; rounds
are interleaved so that load on the machine hits every model alike. Prints images/s per model
and our ratio to the faster peer.

    pip install -e '.[bench]'      # the peers; never part of the main install (make bench)
    PYTHONPATH=. python benchmarks/train_throughput.py --size default     # the default CPU profile's model, 28x28
    PYTHONPATH=. python benchmarks/train_throughput.py --size cifar10 --device cuda --precision bf16 --batch 128
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import yaml

from ddpm.config import config_from_dict
from ddpm.diffusion import GaussianDiffusion
from ddpm.unet import UNet, count_parameters

PROFILES = {"default": "default", "cifar10": "cifar10-gpu"}


def profile_config(name: str):
    from pipeline.profile import render

    return config_from_dict(yaml.safe_load(render(PROFILES[name])))


# ---------------------------------------------------------------------------- the three contenders
def ours(cfg, device):
    model = UNet(cfg.model, image_size=cfg.data.image_size, channels=cfg.data.channels).to(device)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    return model, lambda x0: diffusion.training_loss(model, x0)


def diffusers_peer(cfg, device, width: int):
    from diffusers import DDPMScheduler, UNet2DModel

    levels = len(cfg.model.channel_mult)
    attn = [cfg.data.image_size // 2**i in cfg.model.attention_resolutions for i in range(levels)]
    model = UNet2DModel(
        sample_size=cfg.data.image_size, in_channels=cfg.data.channels, out_channels=cfg.data.channels,
        block_out_channels=tuple(width * m for m in cfg.model.channel_mult), layers_per_block=cfg.model.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=cfg.model.norm_groups, attention_head_dim=None, dropout=cfg.model.dropout,
    ).to(device)
    schedule = "squaredcos_cap_v2" if cfg.diffusion.schedule == "cosine" else "linear"
    scheduler = DDPMScheduler(num_train_timesteps=cfg.diffusion.timesteps, beta_schedule=schedule)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)

    def loss(x0):
        noise = torch.randn_like(x0)
        t = torch.randint(0, cfg.diffusion.timesteps, (x0.shape[0],), device=device)
        return F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)

    return model, loss


def lucidrains_peer(cfg, device, width: int):
    from denoising_diffusion_pytorch import GaussianDiffusion as LGaussianDiffusion
    from denoising_diffusion_pytorch import Unet

    levels = len(cfg.model.channel_mult)
    full_attn = tuple(cfg.data.image_size // 2**i in cfg.model.attention_resolutions for i in range(levels))
    model = Unet(dim=width, dim_mults=cfg.model.channel_mult, channels=cfg.data.channels, dropout=cfg.model.dropout,
                 full_attn=full_attn, flash_attn=True)
    schedule = "cosine" if cfg.diffusion.schedule == "cosine" else "linear"
    diffusion = LGaussianDiffusion(model, image_size=cfg.data.image_size, timesteps=cfg.diffusion.timesteps,
                                   objective="pred_noise", beta_schedule=schedule, auto_normalize=False).to(device)
    return model, diffusion


def matched(build: Callable[[int], torch.nn.Module], target: int) -> tuple[int, torch.nn.Module]:
    """The base width whose parameter count is closest to ours (widths keep GroupNorm divisible)."""
    best = None
    for width in range(4, 257, 4):
        try:
            model = build(width)
        except Exception:  # a width the peer's GroupNorm/heads cannot take
            continue
        gap = abs(count_parameters(model) - target)
        if best is None or gap < best[0]:
            best = (gap, width, model)
        if count_parameters(model) > 1.2 * target:
            break
    return best[1], best[2]


# ---------------------------------------------------------------------------- timing
def images_per_s(step: Callable[[], None], batch: int, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def make_step(model: torch.nn.Module, loss_fn, x0: torch.Tensor, dtype, device, fused: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(PROFILES), default="default")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile every model")
    args = ap.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    cfg = profile_config(args.size)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    x0 = torch.randn(args.batch, cfg.data.channels, cfg.data.image_size, cfg.data.image_size, device=device)

    our_model, our_loss = ours(cfg, device)
    target = count_parameters(our_model)
    contenders = {"ours": (our_model, our_loss)}
    w, m = matched(lambda w: diffusers_peer(cfg, "cpu", w)[0], target)
    contenders["diffusers"] = diffusers_peer(cfg, device, w)
    w, m = matched(lambda w: lucidrains_peer(cfg, "cpu", w)[0], target)
    model, diffusion = lucidrains_peer(cfg, device, w)
    contenders["lucidrains"] = (model, diffusion)

    steps = {}
    for name, (model, loss_fn) in contenders.items():
        n = count_parameters(model)
        if abs(n - target) > 0.1 * target:
            print(f"warning: {name} has {n / 1e6:.2f}M parameters, more than 10% from ours ({target / 1e6:.2f}M)")
        fn = torch.compile(loss_fn) if args.compile else loss_fn
        steps[name] = make_step(model, fn, x0, dtype, device, fused=device.type == "cuda")
        for _ in range(3):  # warm-up (and compilation)
            steps[name]()

    rates = {name: [] for name in steps}
    for _ in range(args.rounds):  # interleaved, so machine load hits all alike
        for name, step in steps.items():
            rates[name].append(images_per_s(step, args.batch, args.steps, device))

    print(f"\ntraining throughput: {args.size} model, {cfg.data.image_size}x{cfg.data.image_size}x{cfg.data.channels}, "
          f"batch {args.batch}, {args.precision}, {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'model':<12} {'params':>9} {'images/s (median of rounds)':>28}  rounds")
    medians = {}
    for name, (model, _) in contenders.items():
        medians[name] = statistics.median(rates[name])
        print(f"{name:<12} {count_parameters(model) / 1e6:>8.3f}M {medians[name]:>28.1f}  "
              + " ".join(f"{r:.1f}" for r in rates[name]))
    peer = max(("diffusers", "lucidrains"), key=medians.get)
    print(f"ours / fastest peer ({peer}): {medians['ours'] / medians[peer]:.2f}x")


if __name__ == "__main__":
    main()
