"""What every stage entry point shares: logging, the typed config, and one-line errors."""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ddpm.config import Config, load_config
from ddpm.errors import DataError, UserError
from pipeline.paths import LOSS_CURVE, PARAMS

log = logging.getLogger("pipeline")


def run(stage: Callable[[Config], None]) -> None:
    """Load params.yaml and run `stage`; bad input ends in one line on stderr and exit code 2."""
    logging.basicConfig(level=os.environ.get("DDPM_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0] if stage.__module__ == "__main__" \
        else stage.__module__.rsplit(".", 1)[-1]
    try:
        stage(load_config(PARAMS))
    except UserError as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print(f"error: {name}: interrupted; nothing half-written was kept", file=sys.stderr)
        sys.exit(130)


def read_json(path: Path) -> dict:
    """Another stage's JSON output; missing means that stage has not run."""
    if not path.is_file():
        raise DataError(f"{path} not found: run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())


def read_loss_curve() -> list[dict[str, float]]:
    """reports/plots/loss.csv (train stage): step, loss, lr, images_per_s per logging window."""
    if not LOSS_CURVE.is_file():
        raise DataError(f"{LOSS_CURVE} not found: run the train stage first (dvc repro train)")
    with open(LOSS_CURVE, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def progress_enabled() -> bool:
    """Progress bars unless DDPM_PROGRESS=0 (CI logs stay readable)."""
    return os.environ.get("DDPM_PROGRESS", "1") != "0"
