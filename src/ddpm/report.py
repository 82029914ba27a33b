"""Figures and the markdown report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import make_grid

from ddpm.io import atomic_path


def save_grid(path: str | Path, images: np.ndarray, nrow: int | None = None) -> None:
    """uint8 NHWC images -> one PNG grid."""
    from PIL import Image

    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    nrow = nrow or int(np.ceil(np.sqrt(len(images))))
    grid = make_grid(x, nrow=nrow, padding=2, pad_value=255).permute(1, 2, 0).numpy()
    if grid.shape[-1] == 1:
        grid = grid[..., 0]
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


def save_loss_plot(path: str | Path, history: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1.2)
    ax.set(xlabel="step", ylabel="L_simple (mean per log window)", yscale="log", title="training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_markdown(*, params: dict, data_meta: dict, metrics: dict[str, dict], grid: str, loss_plot: str) -> str:
    train = metrics.get("train", {}).get("train", {})
    sample = metrics.get("sample", {}).get("sample", {})
    evaluation = metrics.get("evaluate", {})
    domain, coverage = evaluation.get("domain", {}), evaluation.get("coverage", {})
    clf = metrics.get("features", {}).get("classifier", {})
    lines = [
        "# DDPM run report", "",
        f"Data: **{data_meta['source']}**, {data_meta['counts']['train']} training and "
        f"{data_meta['counts']['test']} held-out images of shape {tuple(data_meta['shape'])}.", "",
        f"## Samples ({sample.get('n')} drawn with {sample.get('sampler')}, {sample.get('steps')} steps, "
        "EMA weights)", "", f"![samples]({grid})", "",
        "## Training", "", f"![loss curve]({loss_plot})", "",
        "| steps | parameters | device | precision | images/s | wall (s) | final loss |",
        "|---|---|---|---|---|---|---|",
        f"| {train.get('steps')} | {train.get('parameters')} | {train.get('device')} | {train.get('precision')} | "
        f"{_fmt(train.get('images_per_s'))} | {_fmt(train.get('wall_s'))} | {_fmt(train.get('final_loss'))} |", "",
        "## Metrics", "",
        "| metric | feature space | N | value | data floor |", "|---|---|---|---|---|",
        f"| Fréchet distance (samples vs held-out) | domain classifier | {domain.get('n_samples')} vs "
        f"{domain.get('n_reference')} | {_fmt(domain.get('fd'))} | {_fmt(domain.get('fd_data_floor'))} |",
        f"| confidently classified (p ≥ {params['evaluate']['confidence']}) | domain classifier | "
        f"{coverage.get('n_samples')} | {_fmt(coverage.get('confident_share'))} | |",
        f"| class-share total variation | domain classifier | {coverage.get('n_samples')} | "
        f"{_fmt(coverage.get('class_share_tv'))} | |",
        "", f"The domain classifier scores {_fmt(clf.get('test_accuracy'))} accuracy on the "
        f"{clf.get('n_test')} held-out images. The data floor is the same distance between "
        "real training images and the held-out images at the same N: the best any generator can expect.", "",
        f"Missing classes: {', '.join(coverage.get('missing_classes', [])) or 'none'}.", "",
        "| class | share of samples | share of data |", "|---|---|---|",
        *[f"| {k} | {v['samples']:.3f} | {v['data']:.3f} |" for k, v in coverage.get("per_class", {}).items()],
        "", "## Parameters", "", "```json", json.dumps(params, indent=2), "```", "",
    ]
    return "\n".join(lines)
