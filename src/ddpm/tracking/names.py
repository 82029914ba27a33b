"""The names every side of tracking shares: tags, aliases, and tracking URIs as they may be shown.

One place, so that the register, promote and report stages, the MLflow client and the registry probe
cannot drift apart, and so that every line that leaves the process shows a URI the same way.
"""

from __future__ import annotations

import re

CHECKPOINT_TAG = "checkpoint_sha256"  # on model versions: the SHA-256 of the checkpoint they hold
CANDIDATE = "candidate"  # the alias of the version being evaluated
CHAMPION = "champion"  # the alias of the version that won the champion gate
MEASUREMENT_TAG = "champion_measurement"  # on the champion: the measurement it won (or keeps) the alias with
GATE_TAG = "ddpm.gate"  # on runs: the gate's decision for this run, as JSON
# the served generator's request fields: its signature (mlflow_client) and its parser (generator_model)
REQUEST_FIELDS = ("num_samples", "sampler", "steps", "seed", "batch_size", "class", "guidance")

_CREDENTIALS = re.compile(r"//[^/@]*@")  # user:password@ in scheme://user:password@host


def redact(uri: str) -> str:
    """The URI without credentials (user:password@host)."""
    return _CREDENTIALS.sub("//***@", uri)


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
