"""Stage report: report.md and report.html with the sample grid, loss curve, metrics and parameters."""

from ddpm.config import Config
from ddpm.io import write_text
from ddpm.report import render_html, render_markdown, save_loss_plot
from pipeline import paths
from pipeline.stage import log, read_json, read_loss_curve, run
from pipeline.tracking import log_report


def report(cfg: Config) -> None:
    metrics = {p.stem: read_json(p) for p in (paths.FEATURES_METRICS, paths.TRAIN_METRICS, paths.SAMPLE_METRICS,
                                               paths.EVALUATE_METRICS, paths.SWEEP_METRICS, paths.REGISTRY_METRICS)}
    save_loss_plot(paths.LOSS_FIGURE, read_loss_curve())
    text = render_markdown(
        params=cfg.to_dict(), data_meta=read_json(paths.DATA_META), metrics=metrics,
        grid=paths.SAMPLE_GRID.relative_to(paths.REPORTS).as_posix(),
        loss_plot=paths.LOSS_FIGURE.relative_to(paths.REPORTS).as_posix(),
    )
    write_text(paths.REPORT_MD, text)
    write_text(paths.REPORT_HTML, render_html(text))
    log.info("wrote %s and %s", paths.REPORT_MD, paths.REPORT_HTML)
    log_report(cfg)  # into the MLflow run of this pipeline state


if __name__ == "__main__":
    run(report)
