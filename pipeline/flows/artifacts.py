"""What a retraining run shows in the Prefect UI: the report, the metrics table and the link to its MLflow run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.run_logging import mlflow_run_url


def report_summary(root: Path, results: list[dict[str, Any]]) -> str:
    """reports/report.md up to its parameters, images named instead of shown, and what each stage did."""
    lines = [f"# Retraining run: {root}", "", "| stage | DVC | seconds |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']} |" for r in results]
    report = root / paths.REPORT_MD
    if report.is_file():
        body = report.read_text().split("\n## Parameters", 1)[0]
        body = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", lambda m: f"*{m[1]}: `{paths.REPORTS / m[2]}`*", body)
        lines += ["", f"Full report: `{report}` (and `{root / paths.REPORT_HTML}`).", "", "---", "",
                  body.strip(), "", "*Parameters: `params.yaml`, and the report's last section.*"]
    return "\n".join(lines) + "\n"


def metrics_rows(root: Path) -> list[dict[str, Any]]:
    """reports/metrics/*.json flattened (dotted keys, as `dvc metrics show` prints them)."""
    from dvc.utils.flatten import flatten

    rows = []
    for path in sorted((root / paths.METRICS).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:  # shown, not skipped
            rows.append({"file": path.stem, "metric": "(unreadable JSON)", "value": str(exc)})
            continue
        for key, value in flatten(data if isinstance(data, dict) else {"value": data}).items():
            if isinstance(value, (list, dict)):
                value = json.dumps(value)
            rows.append({"file": path.stem, "metric": key, "value": value})
    return rows


def publish_artifacts(root: Path, results: list[dict[str, Any]]) -> None:
    """The run's artifacts: `retrain-report`, `retrain-metrics` and, where there is one, `mlflow-run`."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    create_markdown_artifact(key="retrain-report", markdown=report_summary(root, results),
                             description=f"reports/report.md of {root}")
    rows = metrics_rows(root)
    if rows:
        create_table_artifact(key="retrain-metrics", table=rows, description="reports/metrics/*.json, flattened")
    url = mlflow_run_url(root)
    if url:
        create_link_artifact(key="mlflow-run", link=url, link_text="MLflow run", description="the tracked run")
