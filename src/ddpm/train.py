"""The training loop: AdamW with warm-up, gradient clipping, EMA, autocast, checkpoints, resume.

One seed drives everything: all randomness (batch order, flips, timesteps, noise, dropout)
comes from torch's generators, whose states the checkpoint stores, so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ddpm.config import Config, ModelConfig, config_from_dict
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError, ConfigError
from ddpm.io import save_torch
from ddpm.unet import UNet, count_parameters

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1


# ---------------------------------------------------------------------------- settings
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f'train.device = "{name}" but no CUDA device is visible: use "auto" or "cpu"')
    return device


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware does bf16 natively; "auto" picks it only there.

    Without native bf16 (AVX2-only CPUs) oneDNN falls back to reference convolutions that run
    about 10x slower than fp32, so "auto" keeps fp32 on such CPUs.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return torch.bfloat16 if native else None


def build_model(model_cfg: ModelConfig, image_size: int, channels: int) -> UNet:
    return UNet(model_cfg, image_size=image_size, channels=channels)


def build_optimizer(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel on CPU and GPU alike: one pass over all parameters.

    On the 2-core CPU the default (per-tensor) AdamW step took 17-23 ms on the default model and
    0.2-0.25 s on the 35.7M CIFAR-10 model; fused, 3 ms and 0.03 s (README, Benchmarks).
    """
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def to_model_input(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return batch_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ---------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class Distributed:
    """This process's place under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; plain `python` sets none of them."""
    import os

    return Distributed(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(dist_info: Distributed, device: torch.device) -> torch.device:
    """Join the process group (NCCL on GPUs, gloo on CPUs); each rank takes its own GPU."""
    if dist_info.world_size == 1:
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def global_mean(x: torch.Tensor, world_size: int) -> float:
    """The mean of a per-rank scalar over all ranks: the global batch's value, as one process would log it."""
    if world_size > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
        x /= world_size
    return x.item()


# ---------------------------------------------------------------------------- state
class BatchSampler:
    """Epochs of shuffled indices from a seeded generator; its state is part of the checkpoint."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0

    def next(self) -> torch.Tensor:
        out = []
        need = self.batch_size
        while need:
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
            take = min(need, self.n - self.pos)
            out.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            need -= take
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"], int(state["pos"])


@dataclass
class TrainResult:
    model: UNet
    ema: UNet
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)


def lr_lambda(warmup_steps: int, total_steps: int, decay: str = "constant") -> Callable[[int], float]:
    """LR factor at `step`: linear warm-up to 1, then constant or a cosine down to 0 at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


# ---------------------------------------------------------------------------- training
def train(
    cfg: Config, images: np.ndarray, *, resume_path: str | Path | None = None,
    progress: bool = True, max_steps: int | None = None,
) -> TrainResult:
    """Train eps_theta on uint8 NHWC images for cfg.train.steps steps (resuming when possible).

    `resume_path`: where snapshots go every cfg.train.checkpoint_every steps; if a compatible
    snapshot is there, training continues from it. `max_steps` stops early (for tests of resume).
    """
    tc = cfg.train
    ddp = distributed_from_env()
    if tc.batch_size % ddp.world_size:
        raise ConfigError(f"train.batch_size = {tc.batch_size} cannot be split across {ddp.world_size} processes: "
                          f"use a multiple of {ddp.world_size}")
    device = init_distributed(ddp, resolve_device(tc.device))
    local = slice(ddp.rank * tc.batch_size // ddp.world_size, (ddp.rank + 1) * tc.batch_size // ddp.world_size)
    amp_dtype = autocast_dtype(tc.precision, device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    n, h, w, c = images.shape
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    model = build_model(cfg.model, h, c).to(device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    optimizer = build_optimizer(model.parameters(), tc.lr, tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.warmup_steps, tc.steps, tc.lr_decay))
    sampler = BatchSampler(n, tc.batch_size, cfg.seed)
    flip_gen = torch.Generator().manual_seed(cfg.seed + 1)
    step, history = 0, []

    if resume_path is not None and Path(resume_path).is_file():
        state = load_checkpoint(resume_path)
        if state["config"] == cfg.training_dict() and state["step"] < tc.steps:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            sampler.load_state_dict(state["sampler"])
            flip_gen.set_state(state["rng"]["flip"])
            torch.set_rng_state(state["rng"]["torch"])
            if device.type == "cuda" and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"], device)
            step, history = state["step"], list(state["history"])
            log.info("resuming from %s at step %d", resume_path, step)
        else:
            log.info("ignoring %s: it was written for other parameters", resume_path)

    forward = model
    if ddp.world_size > 1:  # gradients are averaged over ranks: the same update as one process on the global batch
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(forward) if tc.compile else forward
    n_params = count_parameters(model)
    log.info("U-Net with %.2fM parameters on %s, %s", n_params / 1e6, device, amp_dtype or "fp32")

    def snapshot() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "config": cfg.training_dict(), "step": step, "history": history,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "flip": flip_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        }

    stop = min(tc.steps, max_steps) if max_steps is not None else tc.steps
    model.train()
    # The loss is summed on the device and read once per log window: reading it every step
    # (.item(), or an isfinite check) would stall the host until the GPU caught up.
    window_loss, window_n, window_t0 = torch.zeros((), device=device), 0, time.perf_counter()
    run_t0, run_images = time.perf_counter(), 0
    bar = tqdm(total=tc.steps, initial=step, desc="train", disable=not (progress and ddp.is_main),
               dynamic_ncols=True)
    while step < stop:
        # Every rank draws the whole global batch (indices, flips, t, noise) from identically seeded
        # generators and keeps its own slice, so N processes see exactly one process's batches.
        x0 = to_model_input(data[sampler.next()[local].to(device)])
        if tc.hflip:
            flip = (torch.rand(tc.batch_size, generator=flip_gen) < 0.5)[local]
            x0 = torch.where(flip.to(device)[:, None, None, None], x0.flip(3), x0)
        t = torch.randint(0, diffusion.num_timesteps, (tc.batch_size,), device=device)[local]
        noise = torch.randn((tc.batch_size, *x0.shape[1:]), device=device)[local]
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = diffusion.training_loss(forward, x0, t, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
        step += 1
        window_loss += loss.detach().float()
        window_n += 1
        run_images += tc.batch_size
        log_now = step % tc.log_every == 0 or step == stop
        save_now = resume_path is not None and (step % tc.checkpoint_every == 0 or step == stop)
        if log_now or save_now:  # every rank gets here at the same steps
            mean_loss = global_mean(window_loss / window_n, ddp.world_size)
            if not math.isfinite(mean_loss):  # before a diverged model can be saved
                raise FloatingPointError(f"training loss is {mean_loss} in steps {step - window_n + 1}-{step}: "
                                         "lower train.lr")
        if log_now:
            elapsed = time.perf_counter() - window_t0
            row = {"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                   "images_per_s": window_n * tc.batch_size / elapsed}
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
            window_loss.zero_()
            window_n, window_t0 = 0, time.perf_counter()
        bar.update(1)
        if save_now and ddp.is_main:
            save_torch(resume_path, snapshot())
    bar.close()

    wall = time.perf_counter() - run_t0
    stats = {
        "steps": step, "parameters": n_params, "wall_s": wall,
        "images_per_s": run_images / wall if wall > 0 else math.nan,
        "final_loss": history[-1]["loss"] if history else math.nan,
        "device": str(device), "precision": "bf16" if amp_dtype else "fp32", "processes": ddp.world_size,
    }
    return TrainResult(model=model, ema=ema.module, step=step, history=history, stats=stats, checkpoint=snapshot())


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    save_torch(path, state)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: run the train stage first (dvc repro train)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, wrong format, pickled code
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.__class__.__name__}): "
                              "delete it and re-run the train stage") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a format-{CHECKPOINT_FORMAT} DDPM checkpoint: "
                              "re-run the train stage")
    return state


def load_ema_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[UNet, Config]:
    """The EMA generator and the configuration it was trained with."""
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"])
    model = build_model(cfg.model, cfg.data.image_size, cfg.data.channels)
    ema_state = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
    model.load_state_dict(ema_state)
    return model.to(device).eval(), cfg
