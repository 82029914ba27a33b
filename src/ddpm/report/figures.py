"""The report's figures as PNGs with reproducible bytes (matplotlib Agg, no version or time in the file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ddpm.io import atomic_path

# PNG text chunks matplotlib would write ("Software: Matplotlib version ..."): none, so that the
# bytes depend on the data alone and DVC sees an unchanged figure as unchanged.
_NO_METADATA = {"Software": None}


def _save(fig: Figure, path: str | Path) -> None:
    """Figure objects without pyplot: Agg renders the PNG, and no global backend or figure list is touched."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata=_NO_METADATA)


def save_loss_figure(path: str | Path, history: list[dict[str, float]]) -> None:
    fig = Figure(figsize=(6, 3.2), dpi=120)
    ax = fig.subplots()
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1.2)
    ax.set(xlabel="step", ylabel="L_simple (mean per log window)", yscale="log", title="training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _mosaic(tiles: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 (rows, columns, H, W, C) -> one image with `pad` white pixels between tiles."""
    rows, cols, h, w, c = tiles.shape
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), 255, dtype=np.uint8)
    for r in range(rows):
        for k in range(cols):
            out[r * (h + pad):r * (h + pad) + h, k * (w + pad):k * (w + pad) + w] = tiles[r, k]
    return out


def _show_mosaic(ax: Axes, tiles: np.ndarray, column_labels: list[str], row_labels: list[str]) -> None:
    image = _mosaic(tiles)
    gray = image.shape[-1] == 1
    ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None, vmin=0, vmax=255,
              interpolation="nearest")
    rows, cols, h, w, _ = tiles.shape
    ax.set_xticks([k * (w + 2) + w / 2 for k in range(cols)], column_labels, fontsize=8)
    ax.set_yticks([r * (h + 2) + h / 2 for r in range(rows)], row_labels, fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def save_trajectory_figure(path: str | Path, *, forward: np.ndarray, x_t: np.ndarray, x0_hat: np.ndarray,
                           timesteps: list[int], sampler: str, real_classes: list[str]) -> None:
    """Top: q(x_t | x_0) of real images, t rising; bottom: the sampler from noise, x_t above its x̂_0.

    forward: uint8 (n_real, columns, H, W, C) at ascending `timesteps`, its rows labelled with their
    images' class names `real_classes` (the data set's own: "7", "airplane", a folder's name); x_t, x0_hat: uint8
    (n_samples, columns, H, W, C) at the same timesteps descending. Columns are labelled with
    the papers' t = 1..T (code index + 1).
    """
    n_real, n_gen, cols = len(forward), len(x_t), len(timesteps)
    reverse = np.stack([x_t, x0_hat], axis=1).reshape(2 * n_gen, *x_t.shape[1:])  # x_t row, then its x̂_0 row
    fig = Figure(figsize=(max(6.0, 1.0 + 0.8 * cols), 1.2 + 0.75 * (n_real + 2 * n_gen)), dpi=100)
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [n_real, 2 * n_gen]})
    _show_mosaic(top, forward, [f"t={t + 1}" for t in sorted(timesteps)],
                 [name.replace("$", r"\$") for name in real_classes])  # a name is text, not mathtext
    top.set_title(r"forward process $x_t \sim q(x_t \mid x_0)$ on held-out images, one per class", fontsize=10)
    _show_mosaic(bottom, reverse, [f"t={t + 1}" for t in timesteps],
                 [label for i in range(n_gen) for label in (f"$x_t$ ({i + 1})", rf"$\hat{{x}}_0$ ({i + 1})")])
    bottom.set_title(rf"reverse process ({sampler}) from noise: $x_t$ above the predicted $\hat{{x}}_0$", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def save_sampler_sweep_figure(path: str | Path, rows: list[dict]) -> None:
    """FID against sampler steps, one line per sampler; the data floor dashed. Rows as in sampler_sweep.csv."""
    fig = Figure(figsize=(6, 3.4), dpi=120)
    ax = fig.subplots()
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        mine = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["steps"])
        ax.plot([r["steps"] for r in mine], [r["fid"] for r in mine], marker="o", lw=1.2, label=sampler)
    for floor, n_floor in sorted({(r["fid_floor"], r["n_floor"]) for r in rows}):
        ax.axhline(floor, color="0.4", ls="--", lw=1, label=f"data floor (N={n_floor})")
    space, n = rows[0]["space"], rows[0]["n_samples"]
    ax.set(xscale="log", xlabel="sampler steps (network evaluations per sample)", ylabel=f"FID ({space})",
           title=f"FID against sampler steps ({space} features, N={n})")
    steps = sorted({r["steps"] for r in rows})
    ax.set_xticks(steps, [str(s) for s in steps])  # the step counts run, not log-scale decades
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def save_coverage_figure(path: str | Path, per_class: dict[str, dict[str, float]]) -> None:
    """Share of samples per predicted class beside the data's share of that class."""
    classes = list(per_class)
    x = np.arange(len(classes))
    fig = Figure(figsize=(6, 3.2), dpi=120)
    ax = fig.subplots()
    ax.bar(x - 0.2, [per_class[c]["samples"] for c in classes], width=0.4, label="samples (classifier's verdict)")
    ax.bar(x + 0.2, [per_class[c]["data"] for c in classes], width=0.4, label="held-out data")
    ax.set_xticks(x, classes)
    ax.set(xlabel="class", ylabel="share", title="class coverage")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def save_training_quality_figure(path: str | Path, rows: list[dict[str, float]]) -> None:
    """FID against training step, and the share of samples classified confidently (train_eval.csv rows).

    Without rows (evaluation off, or a run shorter than train.eval_every) the figure says so: the file is
    a declared DVC output either way, so a teammate's `dvc pull` never leaves a stale one behind.
    """
    fig = Figure(figsize=(6, 3.2), dpi=120)
    ax = fig.subplots()
    if not rows:
        ax.axis("off")
        ax.text(0.5, 0.5, "quality during training: not measured in this run\n(train.eval_every = 0, or fewer "
                "steps than train.eval_every)", ha="center", va="center", fontsize=9)
        _save(fig, path)
        return
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["fid"] for r in rows], marker="o", lw=1.2, color="C0")
    ax.set(xlabel="training step", title="quality during training")
    ax.set_ylabel("FID", color="C0")
    ax.grid(alpha=0.3)
    share = ax.twinx()
    share.plot(steps, [r["confident"] for r in rows], marker="s", ls="--", lw=1, color="C1")
    share.set_ylabel("confidently classified share", color="C1")
    fig.tight_layout()
    _save(fig, path)
