"""The order of the training batches: epochs of shuffled indices from one seeded generator, whose state is part
of every snapshot, so a resumed run draws the batches the uninterrupted run would have drawn."""

from __future__ import annotations

from typing import Any

import torch


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
