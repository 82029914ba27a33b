"""Where a stage runs: the device, the CPU kernels, the autocast precision, the torchrun processes.

None of this is part of what a checkpoint was trained with (its fingerprint): a run may resume on
another device or with another number of processes.

The CPU kernels: oneDNN, ATen and MKL pick kernels by instruction set, and their blocking by cache sizes, so
fp32 results differ in their last bits from one CPU model to the next and a few uint8 pixels of the samples
with them. `runtime.cpu_isa: avx2` caps all three at AVX2 before torch loads (`PORTABLE_CPU_ENV`,
pipeline/__init__.py); measured, that did not give an Intel Xeon's bytes on an AMD EPYC, and it costs speed,
so `native` (the default) lets each CPU use its best kernels, with MKL's results fixed from run to run
(`NATIVE_CPU_ENV`). On a CPU, autocast is bf16 only when asked for (`train.precision: bf16`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpm.config import Config
from ddpm.config.groups import PORTABLE_CPU_ENV
from ddpm.config.memory import check_memory
from ddpm.errors import ConfigError

log = logging.getLogger(__name__)


def cpu_kernels_pinned() -> bool:
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == PORTABLE_CPU_ENV["ONEDNN_MAX_CPU_ISA"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f'runtime.device = "{name}" but no CUDA device is visible: use "auto" or "cpu"')
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.index is not None and device.index >= count:  # torch would fail at the first tensor moved there
        raise ConfigError(f"runtime.device = {name!r} but this machine has {count} CUDA device"
                          f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}): use one of them, or \"auto\"")
    return device


def check_before_run(cfg: Config) -> None:
    """What each stage checks before it allocates or writes that needs the machine or the chain's numbers (so not in
    ddpm.config, torch- and numpy-free): the device exists, every batch's lower bound of memory fits it
    (ddpm.config.memory), and EDM's training noise levels fall inside the chain."""
    check_lognormal_noise(cfg)
    device, processes = resolve_device(cfg.runtime.device), distributed_from_env()
    host = host_memory_bytes()
    if device.type == "cuda":  # the GPU this process will take (init_distributed: its local rank's under torchrun)
        index = processes.local_rank if processes.world_size > 1 else device.index or 0
        device_bytes, name = torch.cuda.get_device_properties(index).total_memory, f"GPU cuda:{index}"
    else:
        device_bytes, name = host, "CPU memory"
    check_memory(cfg, device_bytes, host, name, processes.world_size)


def check_lognormal_noise(cfg: Config) -> None:
    """EDM's ln sigma ~ N(P_mean, P_std^2) is rounded to the chain's nearest t (ddpm.timesteps): a mean or a spread far
    outside the chain's noise levels puts nearly every step at t = 0 or t = T - 1, a run that trains one noise level
    and samples noise."""
    if cfg.train.lognormal_noise is None or cfg.diffusion.timesteps <= 2:  # T <= 2: every t is an end
        return
    import numpy as np

    from ddpm.schedules import make_betas

    p_mean, p_std = cfg.train.lognormal_noise
    abar = np.cumprod(1.0 - make_betas(cfg.diffusion))
    log_sigma = 0.5 * np.log((1.0 - abar) / abar)
    inner = (log_sigma[:2].mean(), log_sigma[-2:].mean())  # the bounds of the bins between the two ends

    def cdf(x: float) -> float:
        return 0.5 * math.erfc((p_mean - x) / (p_std * math.sqrt(2.0)))

    ends = cdf(inner[0]) + 1.0 - cdf(inner[1])
    if ends > 0.5:
        raise ConfigError(f"train.lognormal_noise = [{p_mean}, {p_std}] draws {ends:.0%} of training steps at the "
                          f"chain's ends (t = 0 or T - 1; its ln sigma runs from {log_sigma[0]:.1f} to "
                          f"{log_sigma[-1]:.1f}): choose P_mean within that range and P_std about 1 (EDM: [-1.2, 1.2])")


def host_memory_bytes() -> int:
    """The memory this process may use: the machine's RAM, or its cgroup's limit where lower (a container)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # cgroup v2, v1
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: "auto" is bf16 on a GPU and fp32 on a CPU, "bf16" is bf16 everywhere.

    On a CPU bf16 is an opt-in: the default's quality was measured in fp32, and without native bf16
    (AVX2-only CPUs, or kernels capped at AVX2) oneDNN falls back to reference convolutions far slower
    than fp32 (docs/reproducibility.md).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" else None


# ---------------------------------------------------------------------------- torchrun processes
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


def gather_batch(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """The global batch of a per-rank slice, in rank order (each rank holds its consecutive share)."""
    if world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size)]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def global_mean(x: torch.Tensor, world_size: int) -> float:
    """The mean of a per-rank scalar over all ranks: the global batch's value, as one process would log it."""
    if world_size > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
        x /= world_size
    return x.item()


def process_batches(count: int, batch_size: int, processes: Distributed = Distributed()) -> list[range]:
    """The indices of each batch of range(count) that this process takes: batches r, r + W, ... of rank r of W.
    One process's batches are these batches too, so per-batch work split this way gives one process's bytes."""
    starts = range(processes.rank * batch_size, count, processes.world_size * batch_size)
    batches = [range(start, min(start + batch_size, count)) for start in starts]
    if processes.world_size > 1:
        log.info("process %d of %d takes %d of %d items (%d batches of %d)", processes.rank, processes.world_size,
                 sum(map(len, batches)), count, len(batches), batch_size)
    return batches


def gather_objects(parts: dict, world_size: int) -> dict:
    """Every rank's {index: value} merged into one dict on every rank (pickled over the process group)."""
    if world_size == 1:
        return parts
    gathered: list[dict] = [{} for _ in range(world_size)]
    torch.distributed.all_gather_object(gathered, parts)
    return {k: v for rank_parts in gathered for k, v in rank_parts.items()}
