"""The MLflow client of the pipeline: runs, logging, the model registry and its aliases.

Library code: the tracking URI, the experiment and every file to log arrive as arguments
(pipeline/run_logging.py knows the project's paths); the champion rule itself is ddpm.tracking.champion.
Every MLflow failure becomes a one-line `TrackingError` that names MLFLOW_TRACKING_URI and the
fix, and the HTTP client gives up within seconds when the server is down (MLflow's defaults
retry for minutes); the MLFLOW_HTTP_REQUEST_* variables still override this. Telemetry is off, and
MLflow's own progress output (INFO lines such as database migrations, artifact progress bars, run
links on stdout) stays out of the stages' logs, which say what was done in their own summary line;
MLflow's warnings and errors still show. Each MLFLOW_* variable set in the environment wins.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ddpm.tracking.names import (
    CHAMPION,
    CHECKPOINT_TAG,
    GATE_TAG,
    MEASUREMENT_TAG,
    logged_marker,
    redact,
    redact_process_output,
)

for _key, _value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_DISABLE_TELEMETRY": "true",
                     "MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                     "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}.items():
    os.environ.setdefault(_key, _value)  # before mlflow is imported
redact_process_output()  # before mlflow is imported too: its lines may carry the tracking URI's password

import mlflow  # noqa: E402
import requests  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.entities.model_registry import ModelVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from ddpm.errors import TrackingError, TrackingUnavailable  # noqa: E402
from ddpm.tracking.champion import gate, gate_note, rightful_champion  # noqa: E402
from ddpm.tracking.failures import tracking_error  # noqa: E402

_BATCH = 100  # MLflow's limit of params (and tags) per log_batch call
_SETTLE_ROUNDS = 10  # alias moves after a promotion before giving up: each round needs another promotion racing it
# MLflow logs a database error's whole traceback before raising it as the MlflowException that tracking_error
# turns into the stage's one line
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


class Tracker:
    """One experiment on one tracking backend; every call raises TrackingError on failure."""

    def __init__(self, uri: str, experiment: str, *, where: str | None = None, artifact_location: str | None = None):
        self.uri = uri
        self.where = where or f"MLFLOW_TRACKING_URI={redact(uri)}"
        with self.errors():
            mlflow.set_tracking_uri(uri)  # the fluent API (log_model, register_model) uses the same backend
            self.client = MlflowClient(uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is not None and exp.lifecycle_stage != "active":
                raise TrackingError(f"MLflow experiment {experiment!r} at {self.where} is deleted: restore it "
                                    f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or set "
                                    "another tracking.experiment")
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
                experiment, artifact_location=artifact_location)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except (MlflowException, requests.RequestException) as exc:
            raise tracking_error(self.where, exc) from None

    # ------------------------------------------------------------------------ runs
    def find_run(self, tags: dict[str, str]) -> str | None:
        """The oldest run of the experiment carrying all these tags."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        with self.errors():
            runs = self.client.search_runs([self.experiment_id], query, max_results=1,
                                           order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def create_run(self, name: str, tags: dict[str, str]) -> str:
        with self.errors():
            return self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id

    def finish(self, run_id: str) -> None:
        with self.errors():
            self.client.set_terminated(run_id, "FINISHED")

    def run_tags(self, run_id: str) -> dict[str, str]:
        with self.errors():
            return dict(self.client.get_run(run_id).data.tags)

    def log(self, run_id: str, *, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
            series: list[dict[str, float]] | None = None, tags: dict[str, str] | None = None,
            artifacts: dict[str, list[Path]] | None = None) -> None:
        """Parameters, metrics (step 0), per-step series (rows with a "step" key), tags, then files.

        `artifacts` maps an artifact folder ("" for the root) to the files that go there.
        """
        now = int(time.time() * 1000)
        entries: list[Any] = [Param(k, str(v)) for k, v in (params or {}).items()]
        entries += [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        for row in series or []:
            entries += [Metric(k, float(v), now, int(row["step"])) for k, v in row.items() if k != "step"]
        entries += [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        with self.errors():
            for folder, files in (artifacts or {}).items():
                for f in files:
                    self.client.log_artifact(run_id, str(f), artifact_path=folder or None)
            for i in range(0, len(entries), _BATCH):
                chunk = entries[i:i + _BATCH]
                self.client.log_batch(run_id, metrics=[e for e in chunk if isinstance(e, Metric)],
                                      params=[e for e in chunk if isinstance(e, Param)],
                                      tags=[e for e in chunk if isinstance(e, RunTag)])

    def log_once(self, run_id: str, what: str, fingerprint: str, payload: Callable[[], dict[str, Any]]) -> bool:
        """`log(**payload())` unless this run already holds `what` with this fingerprint (re-runs add nothing).

        `payload` is called only when something is to be logged (it may read files, import torch, ...).
        """
        marker = logged_marker(what)
        if self.run_tags(run_id).get(marker) == fingerprint:
            return False
        entries = payload()
        entries["tags"] = {**entries.get("tags", {}), marker: fingerprint}  # logged last, once all else is in
        self.log(run_id, **entries)
        return True

    # ------------------------------------------------------------------------ registry
    def find_version(self, model_name: str, checkpoint_sha256: str) -> ModelVersion | None:
        """The version of `model_name` that holds this checkpoint, if any."""
        with self.errors():
            found = self.client.search_model_versions(
                f"name = '{model_name}' and tags.{CHECKPOINT_TAG} = '{checkpoint_sha256}'")
        return min(found, key=lambda v: int(v.version)) if found else None

    def register_generator(self, run_id: str, model_name: str, *, model_code: Path, checkpoint: Path,
                           checkpoint_sha256: str, code_dir: Path, image_shape: tuple[int, int, int],
                           pip_requirements: list[str], model_config: dict[str, Any]) -> ModelVersion:
        """Log the generator as a pyfunc model from code in `run_id` and register it as a new version.

        `model_code`: the file that builds the model (mlflow.models.set_model); `checkpoint`: its only
        artifact; `code_dir`: the library package, bundled so that the model loads without this project;
        `model_config`: what the model reads at load time (the sample parameters its requests default to).
        """
        import pandas as pd

        # One image with the registered sample parameters: the UI and `mlflow models serve` show it as the
        # request to start from, and MLflow checks before registering that the logged model loads and answers it.
        example = pd.DataFrame([{"num_samples": 1, "seed": 0}])
        with self.errors():
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="generator", python_model=str(model_code), artifacts={"checkpoint": str(checkpoint)},
                    code_paths=[str(code_dir)], signature=generator_signature(image_shape), input_example=example,
                    pip_requirements=pip_requirements, model_config=model_config,
                    tags={CHECKPOINT_TAG: checkpoint_sha256})
            # the client, not mlflow.register_model: the same calls without its progress lines on stderr
            try:
                self.client.create_registered_model(model_name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            return self.client.create_model_version(
                model_name, info.model_uri, run_id=run_id, model_id=info.model_id,
                tags={CHECKPOINT_TAG: checkpoint_sha256, "run_id": run_id},
                description=f"DDPM generator (EMA weights) of checkpoint sha256 {checkpoint_sha256[:12]}, run "
                            f"{run_id}. predict: one row per request {{num_samples, sampler, steps, seed, batch_size, "
                            "class, guidance} -> uint8 NHWC images (class and guidance: conditional models).")

    def alias_version(self, model_name: str, alias: str) -> ModelVersion | None:
        with self.errors():
            try:
                return self.client.get_model_version_by_alias(model_name, alias)
            except MlflowException as exc:
                if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                    return None
                raise

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        with self.errors():
            self.client.set_registered_model_alias(model_name, alias, version)

    def settle_champion(self, model_name: str) -> ModelVersion | None:
        """Compare-and-set after a promotion: re-read the champion and move the alias to ddpm.tracking.champion's
        rightful_champion among the versions that won it, until a read finds it there; the champion then.

        Two promotions at once each move the alias from the champion they read, so the later write can leave
        the worse one champion after the better one has checked; whichever checks last puts the better one back.
        """
        for _ in range(_SETTLE_ROUNDS):
            champion = self.alias_version(model_name, CHAMPION)
            if champion is None or MEASUREMENT_TAG not in champion.tags:
                return champion
            with self.errors():
                versions = self.client.search_model_versions(f"name = '{model_name}'")
            winners = {str(v.version): json.loads(v.tags[MEASUREMENT_TAG]) for v in versions if MEASUREMENT_TAG in v.tags}
            best = rightful_champion(str(champion.version), json.loads(champion.tags[MEASUREMENT_TAG]), winners)
            if best == str(champion.version):
                return champion
            self.set_alias(model_name, CHAMPION, best)
        raise TrackingUnavailable(f"the champion alias of {model_name} at {self.where} kept moving under racing "
                                  "promotions: re-run (dvc repro; the Prefect flow retries by itself)")

    def champion_gate(self, run_id: str, model_name: str, version: str, measurement: dict[str, Any]) -> dict[str, Any]:
        """Make `version` the champion if it beats the current one (see `gate`); recorded on the run.

        A run takes its decision once: re-running with the same candidate and measurement returns the
        recorded decision and touches no alias.
        """
        recorded = self.run_tags(run_id).get(GATE_TAG)
        if recorded:
            previous = json.loads(recorded)
            if previous["candidate"] == {"version": str(version), **measurement}:
                return previous
        champion = self.alias_version(model_name, CHAMPION)
        champion_measurement = json.loads(champion.tags[MEASUREMENT_TAG]) \
            if champion is not None and MEASUREMENT_TAG in champion.tags else None
        version = str(version)
        decision = gate(version, measurement, str(champion.version) if champion else None, champion_measurement)
        decision = {"model": model_name, "run_id": run_id, **decision}
        with self.errors():
            if decision["champion"] == version:  # promoted, or already the champion: record how it was measured
                self.client.set_model_version_tag(model_name, version, MEASUREMENT_TAG, json.dumps(measurement))
                self.client.set_registered_model_alias(model_name, CHAMPION, version)
        settled = self.settle_champion(model_name) if decision["champion"] == version else None
        if settled is not None and str(settled.version) != version:  # a better promotion raced this one
            decision = {"model": model_name, "run_id": run_id,
                        **gate(version, measurement, str(settled.version), json.loads(settled.tags[MEASUREMENT_TAG]))}
        self.log(run_id, tags={GATE_TAG: json.dumps(decision), "ddpm.gate.decision": decision["decision"],
                               "mlflow.note.content": gate_note(decision)})
        return decision


# ---------------------------------------------------------------------------- helpers
def generator_signature(image_shape: tuple[int, int, int]):
    """The served generator's signature: uint8 NHWC images out, and no input schema.

    None on purpose: MLflow's schema enforcement answers a wrong type, a missing num_samples or rows that leave
    different fields out (NaN in an integer column) with a multi-line message of its own, and with untyped
    columns it cannot parse CSV at all; ddpm.tracking.generator_model.request_config checks each field in one
    line instead, and names a field it does not know, from JSON and CSV alike.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    h, w, c = image_shape
    return ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, h, w, c))]))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def split_values(flat: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """Numbers become metrics; strings, lists and None become tags (truncated to 500 characters)."""
    metrics = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tags = {k: (v if isinstance(v, str) else json.dumps(v))[:500] for k, v in flat.items() if k not in metrics}
    return metrics, tags
