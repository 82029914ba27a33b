"""The sample grid: a batch of generated images as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from ddpm.io import atomic_path


def save_grid(path: str | Path, images: np.ndarray, nrow: int | None = None) -> None:
    """uint8 NHWC images -> one PNG grid."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    nrow = nrow or int(np.ceil(np.sqrt(len(images))))
    grid = make_grid(x, nrow=nrow, padding=2, pad_value=255).permute(1, 2, 0).numpy()
    if grid.shape[-1] == 1:
        grid = grid[..., 0]
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
