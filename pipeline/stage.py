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
from typing import Any

import yaml

from ddpm.config import Config, config_from_dict
from ddpm.config.parsing import read_mapping
from ddpm.errors import ConfigError, DataError, TrackingUnavailable, UserError
from ddpm.interrupts import TrainingInterrupted
from ddpm.io import write_json
from pipeline.paths import LOSS_CURVE, PARAMS, TIMING, TRAIN_EVAL

log = logging.getLogger("pipeline")
EXIT_BAD_INPUT = 2  # UserError: bad parameters or inputs; the same input fails the same way
EXIT_DIVERGED = 3  # FloatingPointError: training diverged; the same parameters diverge again
EXIT_TEMPORARY = 75  # EX_TEMPFAIL (sysexits.h): the tracking server did not answer, params.yaml changed; retry
DVC_FILES = (Path("dvc.yaml"), Path("registry/dvc.yaml"))  # where the stages declare the params dvc.lock records


def run(stage: Callable[[Config], dict | None]) -> None:
    """Load params.yaml and run `stage`; a failure it can name ends in one line on stderr and an exit code
    that says whether trying again can help (EXIT_TEMPORARY) or not (EXIT_BAD_INPUT, EXIT_DIVERGED)."""
    logging.basicConfig(level=os.environ.get("DDPM_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0] if stage.__module__ == "__main__" \
        else stage.__module__.rsplit(".", 1)[-1]
    t0 = time.perf_counter()
    try:
        raw = read_mapping(PARAMS)  # read once: the values the stage runs with are those it compares at its end
        cfg = config_from_dict(raw)
        if "torch" in sys.modules:  # a stage that computes: its device and memory, before it allocates or writes
            from ddpm.runtime import check_before_run

            check_before_run(cfg)
        started_with = recorded_params(name, raw)
        timing = stage(cfg) or {}  # a stage may return its own wall-clock figures
        check_params_unchanged(name, started_with)
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
    except (TrackingUnavailable, ParamsChanged) as exc:
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


class ParamsChanged(Exception):
    """params.yaml changed under a running stage: DVC reads the parameters when the stage ends, so its dvc.lock
    would credit the outputs to values they were not made with. Running it again uses the new values."""


def recorded_params(stage: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The values of params.yaml (`raw`) that dvc.lock records for `stage` (its `params:` in dvc.yaml), by dotted
    key down to each leaf; all of them where dvc.yaml does not declare the stage or it depends on params.yaml."""
    declared: dict[str, Any] = {}
    for dvc_file in DVC_FILES:
        try:
            declared = declared or yaml.safe_load(dvc_file.read_text())["stages"][stage]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            pass
    keys = None if "params.yaml" in declared.get("deps", []) else declared.get("params")
    if not keys:
        return leaves(raw)
    values: dict[str, Any] = {}
    for key in map(str, keys):
        value: Any = raw
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        values.update(leaves({key: value}))
    return values


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def check_params_unchanged(stage: str, started_with: dict[str, Any]) -> None:
    """ParamsChanged when a value the stage's dvc.lock records differs from what the stage started with."""
    try:
        now = recorded_params(stage, read_mapping(PARAMS))
    except ConfigError as exc:  # unreadable now: changed, as far as DVC can tell
        now = {"params.yaml": str(exc)}
    changed = [key for key in sorted(set(started_with) | set(now)) if started_with.get(key) != now.get(key)]
    if changed:
        key = changed[0]
        raise ParamsChanged(f"params.yaml changed while the stage ran ({key} = {started_with.get(key)!r} when it "
                            f"started, {now.get(key)!r} now): dvc.lock would record values this run did not use, so "
                            "the stage fails instead; re-run (dvc repro) to run it with the new ones")


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
