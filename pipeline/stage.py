"""What every stage entry point shares: logging, the typed config, and one-line errors."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ddpm.config import Config, load_config
from ddpm.errors import DataError, TrackingUnavailable, UserError
from ddpm.interrupts import TrainingInterrupted
from ddpm.io import write_json
from pipeline.paths import LOSS_CURVE, PARAMS, TIMING, TRAIN_EVAL

log = logging.getLogger("pipeline")
EXIT_BAD_INPUT = 2  # UserError: bad parameters or inputs; the same input fails the same way
EXIT_DIVERGED = 3  # FloatingPointError: training diverged; the same parameters diverge again
EXIT_TEMPORARY = 75  # EX_TEMPFAIL (sysexits.h): the tracking server did not answer; worth a retry


def run(stage: Callable[[Config], dict | None]) -> None:
    """Load params.yaml and run `stage`; a failure it can name ends in one line on stderr and an exit code
    that says whether trying again can help (EXIT_TEMPORARY) or not (EXIT_BAD_INPUT, EXIT_DIVERGED)."""
    logging.basicConfig(level=os.environ.get("DDPM_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0] if stage.__module__ == "__main__" \
        else stage.__module__.rsplit(".", 1)[-1]
    t0 = time.perf_counter()
    try:
        timing = stage(load_config(PARAMS)) or {}  # a stage may return its own wall-clock figures
        write_json(timing_file(name), {"stage": name, "wall_s": round(time.perf_counter() - t0, 3),
                                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **timing})
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        print(f"error: {name}: cannot write {exc.filename or 'an output'} ({exc.strerror}): free disk space "
              "(or raise the file-size limit) and re-run; the previous outputs are intact", file=sys.stderr)
        sys.exit(EXIT_TEMPORARY)
    except TrainingInterrupted as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        sys.exit(128 + signal.Signals[exc.signal_name])
    except TrackingUnavailable as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        sys.exit(EXIT_TEMPORARY)
    except UserError as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except FloatingPointError as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    except KeyboardInterrupt:
        print(f"error: {name}: interrupted; nothing half-written was kept", file=sys.stderr)
        sys.exit(130)


def timing_file(stage: str) -> Path:
    """Where a stage's wall time goes: beside the metrics, not a DVC output, so that timings, which
    differ from run to run, leave every output's bytes and dvc.lock alone."""
    return TIMING / f"{stage}.json"


def read_json(path: Path) -> dict:
    """Another stage's JSON output; missing means that stage has not run."""
    if not path.is_file():
        raise DataError(f"{path} not found: run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())


def read_loss_curve() -> list[dict[str, float]]:
    """reports/plots/loss.csv (train stage): step, loss and lr per logging window."""
    if not LOSS_CURVE.is_file():
        raise DataError(f"{LOSS_CURVE} not found: run the train stage first (dvc repro train)")
    with open(LOSS_CURVE, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def progress_enabled() -> bool:
    """Progress bars on a terminal; none in a log file (redrawn bars are not log lines).
    DDPM_PROGRESS=1 or 0 decides instead."""
    setting = os.environ.get("DDPM_PROGRESS")
    return sys.stderr.isatty() if setting is None else setting != "0"


def read_train_eval() -> list[dict[str, float]] | None:
    """reports/plots/train_eval.csv (step, fid, confident), or None when this training did not measure it."""
    if not TRAIN_EVAL.is_file():
        return None
    with open(TRAIN_EVAL, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"step", "fid", "confident"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{TRAIN_EVAL} lacks the column(s) {', '.join(sorted(missing))}: re-run the train "
                            "stage, or delete the file to leave quality during training out of the report")
        return [{k: float(row[k]) for k in ("step", "fid", "confident")} for row in reader]
