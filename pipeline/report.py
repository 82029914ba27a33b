"""Stage report: report.md and a self-contained report.html with every figure, metric and their provenance.

Besides its DVC dependencies it reads reports/timing/*.json when present (each stage's wall time,
written by pipeline.stage.run, no stage's output); reports/plots/train_eval.csv (FID against
training step) may be absent or empty, when training did not measure it.
"""

import csv
import io
from pathlib import Path

import torch

from ddpm.checkpoints import load_ema_weights
from ddpm.config import Config
from ddpm.data import load_split
from ddpm.diffusion import GaussianDiffusion
from ddpm.guidance import sampler_model
from ddpm.io import write_text
from ddpm.report.figures import (
    save_coverage_figure,
    save_loss_figure,
    save_sampler_sweep_figure,
    save_training_quality_figure,
    save_trajectory_figure,
)
from ddpm.report.html import render_html
from ddpm.report.render import render_markdown
from ddpm.trajectory import forward_trajectory, one_per_class, reverse_trajectory
from pipeline import paths
from pipeline.run_logging import log_report, mlflow_run_url, provenance
from pipeline.stage import log, read_json, read_loss_curve, read_train_eval, run

TRAJECTORY_IMAGES = 4  # held-out images (one per class) in the forward rows, samples in the reverse rows
TRAJECTORY_COLUMNS = 8


def draw_trajectory(cfg: Config) -> None:
    """The figure of the diffusion itself, from the EMA weights with the sample stage's sampler settings.

    On the CPU whatever trained the model: a few images take seconds, and the figure's bytes then do
    not depend on the machine's accelerator.
    """
    ema, guide, trained = load_ema_weights(paths.CHECKPOINT, "cpu")
    # no labels: a class-conditional model draws for its null class, unguided: the figure shows the diffusion
    model = sampler_model(ema, guide, autoguidance=cfg.sample.autoguidance)
    diffusion = GaussianDiffusion.from_config(trained)
    held_out = load_split(paths.TEST_SPLIT)
    shown = one_per_class(held_out.labels, TRAJECTORY_IMAGES)
    real = held_out.images[shown]
    shape = (TRAJECTORY_IMAGES, trained.data.channels, trained.data.image_size, trained.data.image_size)
    reverse = reverse_trajectory(model, diffusion, cfg.sample, shape, columns=TRAJECTORY_COLUMNS,
                                 generator=torch.Generator().manual_seed(cfg.sample.seed))
    forward = forward_trajectory(diffusion, real, sorted(reverse.timesteps),
                                 generator=torch.Generator().manual_seed(cfg.sample.seed))
    save_trajectory_figure(paths.TRAJECTORY_FIGURE, forward=forward, x_t=reverse.x_t, x0_hat=reverse.x0_hat,
                           timesteps=reverse.timesteps, sampler=cfg.sample.sampler,
                           real_classes=[held_out.class_names[label] for label in held_out.labels[shown]])


def write_coverage_table(per_class: dict[str, dict[str, float]]) -> None:
    """evaluate.json's class shares as a CSV, so that `dvc plots show/diff` can draw them."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "samples", "data"])
    writer.writerows([name, shares["samples"], shares["data"]] for name, shares in per_class.items())
    write_text(paths.COVERAGE_TABLE, buf.getvalue())


def stage_timings() -> list[dict]:
    """The wall time each stage's last run wrote, in the order they finished; this stage's own is not yet known."""
    found = [read_json(p) for p in sorted(paths.TIMING.glob("*.json"))] if paths.TIMING.is_dir() else []
    return sorted((t for t in found if t.get("stage") != "report"), key=lambda t: t["finished"])


def report(cfg: Config) -> None:
    metrics = {p.stem: read_json(p) for p in (paths.CLASSIFIER_METRICS, paths.TRAIN_METRICS, paths.SAMPLE_METRICS,
                                               paths.EVALUATE_METRICS, paths.SWEEP_METRICS, paths.REGISTRY_METRICS)}
    save_loss_figure(paths.LOSS_FIGURE, read_loss_curve())
    draw_trajectory(cfg)
    save_sampler_sweep_figure(paths.SWEEP_FIGURE, list(metrics["sweep"]["sweep"].values()))
    per_class = metrics["evaluate"]["coverage"]["per_class"]
    save_coverage_figure(paths.COVERAGE_FIGURE, per_class)
    write_coverage_table(per_class)
    figures = {"samples": paths.SAMPLE_GRID, "trajectory": paths.TRAJECTORY_FIGURE, "loss": paths.LOSS_FIGURE,
               "sampler_sweep": paths.SWEEP_FIGURE, "coverage": paths.COVERAGE_FIGURE}
    train_eval = read_train_eval()
    save_training_quality_figure(paths.TRAINING_QUALITY_FIGURE, train_eval or [])
    if train_eval:
        figures["training_quality"] = paths.TRAINING_QUALITY_FIGURE
    tags = provenance(metrics["train"]["train"])
    text = render_markdown(
        params=cfg.to_dict(), data_meta=read_json(paths.DATA_META), metrics=metrics,
        registered=read_json(paths.REGISTERED), timings=stage_timings(), run_url=mlflow_run_url(Path(".")),
        git={"commit": tags["mlflow.source.git.commit"], "dirty": tags["ddpm.git_dirty"]},
        figures={name: path.relative_to(paths.REPORTS).as_posix() for name, path in figures.items()},
    )
    write_text(paths.REPORT_MD, text)
    write_text(paths.REPORT_HTML, render_html(text, paths.REPORTS))
    log.info("wrote %s and %s (%d figures embedded)", paths.REPORT_MD, paths.REPORT_HTML, len(figures))
    log_report(cfg)  # into the MLflow run of this pipeline state


if __name__ == "__main__":
    run(report)
