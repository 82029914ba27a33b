"""Whether the tracking backend still holds a registration, asked without importing MLflow.

A no-op `dvc repro` runs the register stage every time (the registry is outside DVC's view); importing
MLflow and opening its store costs seconds, reading two tables with sqlite3 or asking a server over
HTTP costs milliseconds. The probe answers True only when the backend holds the registration exactly as
the register stage leaves it; anything it cannot read, or cannot read without MLflow (another URI
scheme, an authentication plug-in, a separate registry URI, a workspace), answers False, and the caller
then registers through MLflow, which repairs what is missing or names what is wrong.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import urllib.parse
from dataclasses import dataclass

from ddpm.tracking.names import CANDIDATE, CHECKPOINT_TAG, redact, redact_process_output

DELETED_STAGE = "Deleted_Internal"  # MLflow's SQL store keeps deleted versions with this stage
TIMEOUT_S = 10.0  # a server slower than this gets the full registration, which has its own timeouts

log = logging.getLogger(__name__)
redact_process_output()  # the register stage's fast path talks to the backend with this module alone


@dataclass(frozen=True)
class Registration:
    """A model version holding a checkpoint, with alias `candidate`, registered from the run of this
    pipeline state: the run in `experiment` carrying every tag of `run_tags`."""

    model: str
    version: str
    checkpoint_sha256: str
    experiment: str
    run_tags: dict[str, str]


def registry_holds(uri: str, registration: Registration) -> bool:
    """True when the backend at `uri` (sqlite:// or http(s)://) holds `registration`; False otherwise."""
    for variable in ("MLFLOW_REGISTRY_URI", "MLFLOW_WORKSPACE", "MLFLOW_TRACKING_AUTH",
                     "MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        if os.environ.get(variable):
            log.debug("%s is set: the registry is asked through MLflow", variable)
            return False
    scheme = urllib.parse.urlsplit(uri).scheme
    try:
        if scheme == "sqlite":
            return _sqlite_holds(uri, registration)
        if scheme in ("http", "https"):
            return _server_holds(uri, registration)
    except (OSError, sqlite3.Error, ValueError, KeyError) as exc:  # URLError and HTTPError are OSErrors
        log.debug("registry probe of %s failed: %s", redact(uri), redact(str(exc)))
        return False
    log.debug("%s: no probe for this scheme", redact(uri))
    return False


# ---------------------------------------------------------------------------- sqlite: MLflow's tables
_VERSION_SQL = f"""
SELECT 1 FROM model_versions v
JOIN model_version_tags t ON t.workspace = v.workspace AND t.name = v.name AND t.version = v.version
JOIN registered_model_aliases a ON a.workspace = v.workspace AND a.name = v.name AND a.version = v.version
WHERE v.workspace = 'default' AND v.name = ? AND v.version = ? AND v.status = 'READY'
  AND v.current_stage != '{DELETED_STAGE}' AND t.key = '{CHECKPOINT_TAG}' AND t.value = ? AND a.alias = '{CANDIDATE}'
"""
_RUN_SQL = """
SELECT r.run_uuid FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
WHERE e.workspace = 'default' AND e.name = ? AND e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active'
"""


def _sqlite_holds(uri: str, registration: Registration) -> bool:
    path = urllib.parse.unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    if not path or not os.path.isfile(path):  # a deleted database: nothing is registered
        return False
    with sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=TIMEOUT_S) as db:
        version = db.execute(_VERSION_SQL, (registration.model, int(registration.version),
                                            registration.checkpoint_sha256)).fetchone()
        if version is None:
            return False
        tags = " ".join("AND EXISTS (SELECT 1 FROM tags g WHERE g.run_uuid = r.run_uuid AND g.key = ? AND g.value = ?)"
                        for _ in registration.run_tags)
        values = [v for item in registration.run_tags.items() for v in item]
        return db.execute(f"{_RUN_SQL} {tags} LIMIT 1", (registration.experiment, *values)).fetchone() is not None


# ---------------------------------------------------------------------------- http(s): MLflow's REST API
def _server_holds(uri: str, registration: Registration) -> bool:
    api = _Api(uri)
    version = api.get("model-versions/get", name=registration.model, version=registration.version)["model_version"]
    tags = {t["key"]: t.get("value") for t in version.get("tags", [])}
    if (version.get("status") != "READY" or version.get("current_stage") == DELETED_STAGE
            or tags.get(CHECKPOINT_TAG) != registration.checkpoint_sha256
            or CANDIDATE not in version.get("aliases", [])):
        return False
    experiment = api.get("experiments/get-by-name", experiment_name=registration.experiment)["experiment"]
    if experiment.get("lifecycle_stage") != "active":
        return False
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in registration.run_tags.items())
    found = api.post("runs/search", {"experiment_ids": [experiment["experiment_id"]], "filter": query,
                                     "run_view_type": "ACTIVE_ONLY", "max_results": 1})
    return bool(found.get("runs"))


class _Api:
    """MLflow's REST API at a tracking URI, authenticated the way MLflow's own client is from the environment."""

    def __init__(self, uri: str):
        parts = urllib.parse.urlsplit(uri)
        if not parts.hostname:
            raise ValueError(f"{redact(uri)} names no host")
        host = parts.netloc.rpartition("@")[2]  # credentials go in a header, not in the URL
        self.base = urllib.parse.urlunsplit(parts._replace(netloc=host)).rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        user = os.environ.get("MLFLOW_TRACKING_USERNAME") or urllib.parse.unquote(parts.username or "")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or urllib.parse.unquote(parts.password or "")
        if user or password:
            import base64

            self.headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
            self.headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
        self.context = None
        if parts.scheme == "https":
            import ssl  # here, like urllib.request in _call: the sqlite probe of every no-op `dvc repro` needs neither

            if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
                self.context = ssl.create_default_context()  # unverified, as MLflow's client is when told to
                self.context.check_hostname, self.context.verify_mode = False, ssl.CERT_NONE
            else:
                self.context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))

    def get(self, endpoint: str, **query: str) -> dict:
        return self._call(f"{endpoint}?{urllib.parse.urlencode(query)}")

    def post(self, endpoint: str, body: dict) -> dict:
        return self._call(endpoint, json.dumps(body).encode())

    def _call(self, path: str, data: bytes | None = None) -> dict:
        import urllib.request

        request = urllib.request.Request(f"{self.base}/api/2.0/mlflow/{path}", data=data, headers=self.headers,
                                         method="POST" if data is not None else "GET")
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=self.context) as response:
            return json.loads(response.read())
