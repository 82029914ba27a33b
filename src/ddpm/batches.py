"""The training batches: their order, epochs of shuffled indices from one seeded generator whose state is part
of every snapshot (so a resumed run draws the batches the uninterrupted run would have drawn), and reading
them from the prepared data without holding the data set in memory."""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np
import torch


def read_images(images: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    """images[indices] as a uint8 tensor. From a prepared split (a memory-mapped .npy, ddpm.data.load_split) each
    image is read with pread into the batch alone: the pages a memory map touches would stay in the process's
    resident memory, so an epoch over a large data set would hold all of it."""
    if not (isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap)):  # in memory, or a view
        return torch.from_numpy(np.ascontiguousarray(images[indices]))
    if len(indices) and not 0 <= min(indices) <= max(indices) < len(images):
        raise IndexError(f"image indices {min(indices)}..{max(indices)} outside the {len(images)} images")
    batch = np.empty((len(indices), *images.shape[1:]), dtype=images.dtype)
    size = batch[0].nbytes if len(batch) else 0
    fd = os.open(images.filename, os.O_RDONLY)
    try:
        for row, i in zip(batch, indices):
            if os.preadv(fd, [row], images.offset + int(i) * size) != size:
                raise OSError(f"{images.filename} ended before image {int(i)}: re-run the prepare stage")
    finally:
        os.close(fd)
    return torch.from_numpy(batch)


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
