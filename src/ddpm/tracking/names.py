"""The names every side of tracking shares: tags, aliases, and tracking URIs as they may be shown.

One place, so that the register, promote and report stages, the MLflow client and the registry probe
cannot drift apart, and so that every line that leaves the process shows a URI the same way.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import urllib.parse
import warnings

CHECKPOINT_TAG = "checkpoint_sha256"  # on model versions: the SHA-256 of the checkpoint they hold
CANDIDATE = "candidate"  # the alias of the version being evaluated
CHAMPION = "champion"  # the alias of the version that won the champion gate
MEASUREMENT_TAG = "champion_measurement"  # on the champion: the measurement it won (or keeps) the alias with
GATE_TAG = "ddpm.gate"  # on runs: the gate's decision for this run, as JSON
# the served generator's request fields: its signature (mlflow_client) and its parser (generator_model)
REQUEST_FIELDS = ("num_samples", "sampler", "steps", "seed", "batch_size", "class", "guidance")

# user:password@ in scheme://user:password@host; greedy to the last @ before the host, so that an unencoded @ in
# a password is redacted too
_CREDENTIALS = re.compile(r"//[^/\s]*@")
_SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def _secrets() -> list[str]:
    """The tracking credentials this process holds: the environment's password and token, and the password of
    MLFLOW_TRACKING_URI as written and percent-decoded (a library may print either)."""
    found = [os.environ.get(key, "") for key in _SECRET_VARIABLES]
    try:
        password = urllib.parse.urlsplit(os.environ.get("MLFLOW_TRACKING_URI", "")).password or ""
    except ValueError:  # not a URI urllib can split (e.g. an unclosed [ of an IPv6 host): the pattern still applies
        password = ""
    found += [password, urllib.parse.unquote(password)]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)  # shorter ones match common text


def redact(text: str) -> str:
    """`text` (a URI, a message, a log line) without tracking credentials: user:password@ of any URI, and
    every credential of _secrets() wherever it appears."""
    text = _CREDENTIALS.sub("//***@", str(text))
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def redact_process_output() -> None:
    """Redact every log record, warning and uncaught traceback of this process (idempotent).

    Libraries build their own messages from the tracking URI (MLflow's "Invalid url: http://user:pass@...",
    urllib3's retries), so their lines are redacted where they leave, not where they are made.
    """
    global _installed
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def redacted_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            record.msg, record.args = redact(record.getMessage()), None
        except (TypeError, ValueError, KeyError):  # msg and args that do not format: logging reports it on emit
            return record
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(redacted_record)
    format_warning = warnings.formatwarning
    warnings.formatwarning = lambda *args, **kwargs: redact(format_warning(*args, **kwargs))

    def redacted_hook(kind, value, tb) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))

    sys.excepthook = redacted_hook


_installed = False


def logged_marker(what: str) -> str:
    """The run tag that records one logging step as done (ddpm.tracking.mlflow_client.Tracker.log_once)."""
    return f"ddpm.logged.{what}"


def run_page_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The web page of a run on an http(s) tracking server, without credentials (the browser asks for them);
    None for a backend with no web page (sqlite:///mlflow.db, a file store)."""
    if not str(uri).startswith(("http://", "https://")):
        return None
    server = _CREDENTIALS.sub("//", str(uri).rstrip("/"))
    return f"{server}/#/experiments/{experiment_id}/runs/{run_id}"
