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


def _metric_rows(evaluation: dict) -> list[str]:
    rows = []
    for space in ("inception", "domain"):
        m = evaluation.get(space)
        if not m:
            continue
        floor = m["floor"]
        for key, label in (("fid", "FID ↓"), ("kid_mean", "KID ↓"), ("precision", "precision ↑"),
                           ("recall", "recall ↑")):
            value = f"{m[key]:.4g}" + (f" ± {m['kid_std']:.2g}" if key == "kid_mean" else "")
            rows.append(f"| {label} | {space} | {m['n_samples']} vs {m['n_reference']} | {value} | "
                        f"{floor[key]:.4g} (N={floor['n_samples']}) |")
    return rows


def _sweep_rows(sweep: dict) -> list[str]:
    return [f"| {r['sampler']} | {r['steps']} | {r['fid']:.4g} | {r['fid_floor']:.4g} | {r['space']} | "
            f"{r['n_samples']} | {r['samples_per_s']:.3g} |" for r in sweep.values()]


def _registry_lines(registry: dict) -> list[str]:
    """The champion gate's decision (reports/metrics/registry.json, written by the promote stage)."""
    cand, before = registry["candidate"], registry.get("champion_before")
    was = f" (was version {before['version']})" if before and before["version"] != registry["champion"] else ""
    return [
        "## Model registry (MLflow)", "",
        f"Candidate: **{registry['model']}** version {cand['version']} (run `{registry['run_id']}`), "
        f"{registry['metric']} = {cand['value']:.4g} ({cand['under'].get('space')} space, "
        f"N = {cand['under'].get('n_samples')}; {registry['direction']}).", "",
        f"Champion gate: **{registry['decision']}**. The `champion` alias is on version {registry['champion']}{was}. "
        f"Reason: {registry['reason']}.", "",
    ]


def render_markdown(*, params: dict, data_meta: dict, metrics: dict[str, dict], grid: str, loss_plot: str) -> str:
    train = metrics.get("train", {}).get("train", {})
    sample = metrics.get("sample", {}).get("sample", {})
    evaluation = metrics.get("evaluate", {})
    coverage = evaluation.get("coverage", {})
    sweep = metrics.get("sweep", {}).get("sweep", {})
    clf = metrics.get("features", {}).get("classifier", {})
    spaces = {s: evaluation[s]["weights"] for s in ("inception", "domain") if s in evaluation}
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
        "## Metrics (samples against the held-out split)", "",
        "| metric | feature space | N (samples vs held-out) | value | data floor |", "|---|---|---|---|---|",
        *_metric_rows(evaluation), "",
        "Feature spaces: " + "; ".join(f"**{k}** = {v}" for k, v in spaces.items()) + ". "
        f"The domain classifier scores {_fmt(clf.get('test_accuracy'))} accuracy on the {clf.get('n_test')} "
        "held-out images. The data floor is the same metric between real training images and the held-out "
        "images at the same N: the best any generator can expect. FID and KID fall as samples improve; "
        f"precision and recall (k = {params['evaluate']['pr_k']}) rise towards the floor's.", "",
    ]
    if coverage:
        lines += [
            "## Class coverage (domain classifier)", "",
            f"{_fmt(coverage.get('confident_share'))} of {coverage.get('n_samples')} samples are confidently "
            f"classified (p ≥ {params['evaluate']['confidence']}), against {_fmt(coverage.get('confident_share_real'))} "
            f"of {coverage.get('n_real')} real digits the classifier never saw; class-share total variation "
            f"{_fmt(coverage.get('class_share_tv'))} (0 = the data's shares). Missing classes: "
            f"{', '.join(coverage.get('missing_classes', [])) or 'none'}.", "",
            "| class | share of samples | share of data |", "|---|---|---|",
            *[f"| {k} | {v['samples']:.3f} | {v['data']:.3f} |" for k, v in coverage.get("per_class", {}).items()],
            "",
        ]
    if sweep:
        lines += [
            "## FID against the sampler", "",
            "| sampler | steps | FID | data floor | feature space | N | samples/s |", "|---|---|---|---|---|---|---|",
            *_sweep_rows(sweep), "",
        ]
    if metrics.get("registry"):
        lines += _registry_lines(metrics["registry"])
    lines += ["## Parameters", "", "```json", json.dumps(params, indent=2), "```", ""]
    return "\n".join(lines)


def render_html(markdown_text: str, title: str = "DDPM run report") -> str:
    """The same report as a standalone HTML page (tables and images), for browsers and MLflow."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
             "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem}"
             "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:1rem;overflow:auto}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{style}</style></head>\n<body>\n{body}\n</body></html>\n")
