"""Where a stage runs: the device, the CPU kernels, the autocast precision, the torchrun processes.

None of this is part of what a checkpoint was trained with (its fingerprint): a run may resume on
another device or with another number of processes.

Identical bytes on every x86 CPU: oneDNN, ATen and MKL pick kernels by instruction set, and
kernels for AVX-512 sum in another order than kernels for AVX2, so fp32 results differ in their
last bits from one CPU to the next and a few uint8 pixels of the samples with them. With
`runtime.cpu_isa: avx2` (the default) the stage entry points pin all three to AVX2 before torch
loads (`PORTABLE_CPU_ENV`, pipeline/__init__.py), which every x86-64 CPU of the last decade runs; `native` lets each CPU
use its best kernels (and bf16 where it has it natively).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpm.config.groups import PORTABLE_CPU_ENV
from ddpm.errors import CheckpointError


def cpu_kernels_pinned() -> bool:
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == PORTABLE_CPU_ENV["ONEDNN_MAX_CPU_ISA"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f'runtime.device = "{name}" but no CUDA device is visible: use "auto" or "cpu"')
    return device


def cpu_has_native_bf16() -> bool:
    """bf16 instructions on this CPU, and kernels allowed to use them (not pinned to AVX2)."""
    if cpu_kernels_pinned():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware does bf16 natively; "auto" picks it only there.

    Without native bf16 (AVX2-only CPUs, or kernels pinned to AVX2) oneDNN falls back to
    reference convolutions far slower than fp32 (docs/reproducibility.md), so "auto" keeps fp32 there;
    "bf16" is bf16 everywhere.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return torch.bfloat16 if native else None


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


def gather_objects(parts: dict, world_size: int) -> dict:
    """Every rank's {index: value} merged into one dict on every rank (pickled over the process group)."""
    if world_size == 1:
        return parts
    gathered: list[dict] = [{} for _ in range(world_size)]
    torch.distributed.all_gather_object(gathered, parts)
    return {k: v for rank_parts in gathered for k, v in rank_parts.items()}
