"""The training loop: AdamW with warm-up, gradient clipping, EMA, autocast, checkpoints, resume.

One seed drives everything: all randomness (batch order, flips, timesteps, noise, dropout)
comes from torch's generators, whose states the checkpoint stores, so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from ddpm.batches import BatchSampler, read_images
from ddpm.checkpoints import CHECKPOINT_FORMAT
from ddpm.config import Config
from ddpm.data import check_num_classes, to_model_input
from ddpm.diffusion import GaussianDiffusion
from ddpm.ema import ema_beta, power_ema_gamma
from ddpm.errors import ConfigError
from ddpm.guidance import drop_labels
from ddpm.interrupts import TrainingInterrupted, stop_requests
from ddpm.runtime import (
    autocast_dtype,
    distributed_from_env,
    gather_batch,
    global_mean,
    init_distributed,
    resolve_device,
)
from ddpm.snapshots import SnapshotStore
from ddpm.timesteps import timestep_sampler
from ddpm.unet import UNet, count_parameters

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- settings
def build_optimizer(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel on CPU and GPU alike: one pass over all parameters instead of a
    kernel per tensor (the measured gain: docs/results.md)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


# ---------------------------------------------------------------------------- state
@dataclass
class TrainResult:
    model: UNet
    ema: UNet  # the EMA weights the checkpoint serves (the best-scoring ones with train.keep_best)
    step: int
    history: list[dict[str, float]] = field(default_factory=list)  # step, loss, lr per log window
    evals: list[dict[str, float]] = field(default_factory=list)  # step, fid, confident per probe
    stats: dict[str, Any] = field(default_factory=dict)  # what the run was; the same bytes on every run
    timing: dict[str, float] = field(default_factory=dict)  # wall clock: differs from run to run
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
Probe = Callable[[UNet, GaussianDiffusion, torch.device], dict[str, float]]  # EMA model -> {"fid", "confident"}


def train(
    cfg: Config, images: np.ndarray, *, labels: np.ndarray | None = None, snapshots: SnapshotStore | None = None,
    probe: Probe | None = None, progress: bool = True, max_steps: int | None = None,
) -> TrainResult:
    """Train the U-Net on uint8 NHWC images for cfg.train.steps steps (resuming when possible).

    `labels` (int, one per image): what a class-conditional model (model.num_classes > 0) is trained
    on, each dropped to the null class with probability train.cond_drop; unused otherwise.

    `snapshots`: where the run's state goes every cfg.train.checkpoint_every steps and on SIGTERM or
    SIGINT (then TrainingInterrupted is raised); training continues from the newest good snapshot of
    this run (the same training parameters and the store's origin). `probe`: scores the EMA weights every
    cfg.train.eval_every steps. `max_steps` stops early (tests of resume).
    """
    tc = cfg.train
    ddp = distributed_from_env()
    if tc.batch_size % ddp.world_size:
        raise ConfigError(f"train.batch_size = {tc.batch_size} cannot be split across {ddp.world_size} processes: "
                          f"use a multiple of {ddp.world_size}")
    if tc.batch_size // ddp.world_size < tc.accumulate:
        raise ConfigError(f"train.accumulate = {tc.accumulate} micro-batches of {tc.batch_size // ddp.world_size} "
                          f"images a process: use at most {tc.batch_size // ddp.world_size}")
    device = init_distributed(ddp, resolve_device(cfg.runtime.device))
    local = slice(ddp.rank * tc.batch_size // ddp.world_size, (ddp.rank + 1) * tc.batch_size // ddp.world_size)
    amp_dtype = autocast_dtype(tc.precision, device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    n, h, w, c = images.shape  # read a batch at a time (ddpm.batches.read_images): a prepared split stays on disk
    num_classes = cfg.model.num_classes
    if num_classes:
        check_num_classes(num_classes, labels)
        label_data = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    diffusion = GaussianDiffusion.from_config(cfg)
    model = UNet(cfg.model, h, c).to(device)
    model.checkpoint_activations = tc.activation_checkpointing
    timesteps = timestep_sampler(diffusion, lognormal_noise=tc.lognormal_noise, importance_sampling=tc.importance_sampling)
    gamma = power_ema_gamma(tc.ema_sigma_rel) if tc.ema_sigma_rel is not None else None

    def ema_update(ema_params, params, _n_averaged) -> None:  # `step` is this update's number (1-based)
        torch._foreach_lerp_(ema_params, params, 1.0 - ema_beta(step, tc.ema_decay, gamma))

    ema = AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
    optimizer = build_optimizer(model.parameters(), tc.lr, tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.warmup_steps, tc.steps, tc.lr_decay))
    sampler = BatchSampler(n, tc.batch_size, cfg.seed)
    flip_gen = torch.Generator().manual_seed(cfg.seed + 1)
    # The loss is summed on the device and read once per log window: reading it every step
    # (.item(), or an isfinite check) would stall the host until the GPU caught up.
    step, history, evals, best = 0, [], [], None
    mean_loss = math.nan  # until the first log window closes (a probe may come first: eval_every < log_every)
    # train.autoguide_at: the EMA weights at that step, kept as autoguidance's guide (ddpm.guidance)
    guide_step = max(1, round(tc.autoguide_at * tc.steps)) if tc.autoguide_at is not None else None
    guide = None
    window_loss, window_n = torch.zeros((), device=device), 0

    found = snapshots.latest(cfg.training_dict()) if snapshots is not None else None
    if found is not None:
        path, state = found
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        timesteps.load_state_dict(state["timesteps"])
        flip_gen.set_state(state["rng"]["flip"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        step, history, evals, best = state["step"], list(state["history"]), list(state["evals"]), state["best"]
        guide = state.get("guide")
        window_loss.fill_(state["window"]["loss"])
        window_n = state["window"]["n"]
        log.info("resuming from %s at step %d", path, step)

    forward = model
    if ddp.world_size > 1:  # gradients are averaged over ranks: the same update as one process on the global batch
        from torch.nn.parallel import DistributedDataParallel

        forward = ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(forward) if tc.compile else forward
    local_batch = local.stop - local.start
    micro_batches = [slice(i * local_batch // tc.accumulate, (i + 1) * local_batch // tc.accumulate)
                     for i in range(tc.accumulate)]
    n_params = count_parameters(model)
    log.info("U-Net with %.2fM parameters on %s, %s", n_params / 1e6, device, amp_dtype or "fp32")

    def state_now() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "config": cfg.training_dict(), "step": step, "history": history,
            "evals": evals, "best": best, "window": {"loss": window_loss.item(), "n": window_n},
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(), "timesteps": timesteps.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "flip": flip_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            **({"guide": guide} if guide_step is not None else {}),  # no key at all without a guide
        }

    def save_snapshot() -> Path | None:
        return snapshots.save(step, state_now()) if snapshots is not None and ddp.is_main else None

    stop = min(tc.steps, max_steps) if max_steps is not None else tc.steps
    model.train()
    train_s = eval_s = 0.0
    bar = tqdm(total=tc.steps, initial=step, desc="train", disable=not (progress and ddp.is_main),
               dynamic_ncols=True)
    with stop_requests() as stop_signal:
        while step < stop:
            t0 = time.perf_counter()
            # Every rank draws the whole global batch (indices, flips, t, noise) from identically seeded
            # generators and keeps its own slice, so N processes see exactly one process's batches.
            idx = sampler.next()[local]
            batch = read_images(images, idx.numpy())
            x0 = to_model_input((batch.pin_memory() if device.type == "cuda" else batch).to(device, non_blocking=True))
            idx = idx.to(device)
            if tc.hflip:
                flip = (torch.rand(tc.batch_size, generator=flip_gen) < 0.5)[local]
                x0 = torch.where(flip.to(device)[:, None, None, None], x0.flip(3), x0)
            t_global, weights = timesteps.sample(tc.batch_size, device)
            t = t_global[local]
            noise = torch.randn((tc.batch_size, *x0.shape[1:]), device=device)[local]
            y = None
            if num_classes:  # drawn last and only here: an unconditional run draws what it drew before classes
                uniform = torch.rand(tc.batch_size, device=device)[local]
                y = drop_labels(label_data[idx], uniform, tc.cond_drop, num_classes)
            optimizer.zero_grad(set_to_none=True)
            # train.accumulate: the batch drawn above in micro-batches, each loss weighted by its share, so
            # their summed gradients are the whole batch's; DDP averages them over ranks at the last one only
            loss, losses = torch.zeros((), device=device), []
            for part in micro_batches:
                net = forward if y is None else partial(forward, y=y[part])
                with (nullcontext() if part is micro_batches[-1] or ddp.world_size == 1 else ddp_model.no_sync()), \
                        torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    if timesteps.uses_losses:
                        losses.append(diffusion.training_losses(net, x0[part], t[part], noise[part], loss=tc.loss,
                                                                min_snr_gamma=tc.min_snr_gamma))
                        part_loss = (weights[local][part] * losses[-1]).mean()
                    else:
                        part_loss = diffusion.training_loss(net, x0[part], t[part], noise[part], loss=tc.loss,
                                                            min_snr_gamma=tc.min_snr_gamma)
                    part_loss = part_loss if len(micro_batches) == 1 else part_loss * ((part.stop - part.start) / len(x0))
                    part_loss.backward()
                loss += part_loss.detach()
            if timesteps.uses_losses:
                timesteps.update(t_global, gather_batch(torch.cat(losses).detach(), ddp.world_size))
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            ema.update_parameters(model)
            if step == guide_step:
                guide = copy.deepcopy(ema.state_dict())
            window_loss += loss.detach().float()
            window_n += 1
            log_now = step % tc.log_every == 0 or step == tc.steps
            boundary = log_now or step % tc.checkpoint_every == 0 or step == stop
            if boundary:  # every rank gets here at the same steps
                mean_loss = global_mean(window_loss / window_n, ddp.world_size)
                if not math.isfinite(mean_loss):  # before a diverged model can be saved
                    raise FloatingPointError(f"training loss is {mean_loss} in steps {step - window_n + 1}-{step}: "
                                             "lower train.lr")
            if log_now:
                history.append({"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0]})
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                window_loss.zero_()
                window_n = 0
            train_s += time.perf_counter() - t0
            if probe is not None and tc.eval_every and ddp.is_main and (step % tc.eval_every == 0 or step == tc.steps):
                t0 = time.perf_counter()
                evals.append({"step": step, **probe(ema.module, diffusion, device)})
                if tc.keep_best and (best is None or evals[-1]["fid"] < best["fid"]):
                    best = {"step": step, "fid": evals[-1]["fid"], "ema": copy.deepcopy(ema.state_dict())}
                eval_s += time.perf_counter() - t0
                bar.set_postfix(loss=f"{mean_loss:.4f}", fid=f"{evals[-1]['fid']:.3f}")
            bar.update(1)
            if step < tc.steps and (step % tc.checkpoint_every == 0 or step == stop):
                save_snapshot()
            received = stop_signal()
            if ddp.world_size > 1 and boundary:  # all ranks stop at the same step, or a collective would hang
                received = "SIGTERM" if global_mean(torch.tensor(float(received is not None), device=device),
                                                    ddp.world_size) > 0 else None
            if received and (ddp.world_size == 1 or boundary) and step < stop:
                raise TrainingInterrupted(received, step, save_snapshot())
    bar.close()

    final = state_now()
    served = ema.module
    if best is not None:  # train.keep_best: the checkpoint serves the best-scoring EMA weights
        final["ema"] = best["ema"]
        served = copy.deepcopy(ema)
        served.load_state_dict(best["ema"])
        served = served.module
    final["best"] = {k: v for k, v in best.items() if k != "ema"} if best is not None else None
    stats = {"steps": step, "parameters": n_params, "final_loss": history[-1]["loss"] if history else math.nan,
             "device": device.type, "precision": "bf16" if amp_dtype else "fp32", "processes": ddp.world_size,
             "cpu_isa": cfg.runtime.cpu_isa if device.type == "cpu" else "n/a"}
    if final["best"] is not None:
        stats["best_step"], stats["best_fid"] = final["best"]["step"], final["best"]["fid"]
    timing = {"train_s": train_s, "eval_s": eval_s,
              "images_per_s": (step - (found[1]["step"] if found else 0)) * tc.batch_size / train_s if train_s else 0.0}
    return TrainResult(model=model, ema=served, step=step, history=history, evals=evals, stats=stats,
                       timing=timing, checkpoint=final)
