"""MLflow failures as one line each, sorted into those a retry can mend and those it cannot.

TrackingUnavailable (a stage exits 75, EX_TEMPFAIL, and the Prefect flow retries it): a server that does not
answer, a SQLite database locked by another writer (the local backend takes one at a time), a full disk
under the database or the artifacts (freeing space mends it; MLflow wraps both as its own errors, locally
and from a server alike). Anything else is a TrackingError (exit 2): the URI, the server's configuration or
the request is wrong, and the same call fails the same way.
"""

from __future__ import annotations

import errno
import os
import re

import requests

from ddpm.errors import TrackingError, TrackingUnavailable
from ddpm.tracking.names import redact

# SQLite's SQLITE_BUSY and SQLITE_FULL, the OS's ENOSPC and EDQUOT, as their messages read through any wrapper
_BUSY = ("database is locked", "database table is locked")
_FULL = ("database or disk is full", "No space left on device", "Disk quota exceeded")


def _chain(exc: BaseException) -> list[BaseException]:
    chain, e = [], exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def tracking_error(where: str, exc: BaseException) -> TrackingError:
    """One line naming the backend (`where`) and the fix; TrackingUnavailable when a retry can succeed."""
    chain = _chain(exc)
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, requests.ConnectionError) for e in chain) or "Max retries exceeded" in text:
        found = re.search(r"\[Errno -?\d+\] [^'\")(]+", text)
        reason = found.group(0).strip() if found else "no connection"
        if isinstance(exc, requests.Timeout) or "timed out" in text:
            reason = f"no answer within MLFLOW_HTTP_REQUEST_TIMEOUT={os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT']} s"
        return TrackingUnavailable(
            f"cannot reach the MLflow tracking server at {where} ({reason}): start it, or point MLFLOW_TRACKING_URI "
            "at a running server (unset it for the project's local sqlite:///mlflow.db), then re-run (dvc repro)")
    busy = next((m for m in _BUSY if m in text), None)
    if busy:
        return TrackingUnavailable(
            f"MLflow at {where} is busy ({busy}: another process is writing to it): re-run when it has finished "
            "(dvc repro; the Prefect flow retries by itself); pipelines that run at once should share a tracking "
            "server rather than one SQLite file")
    full = next((m for m in _FULL if m in text), None)
    if full is None and any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in chain):
        full = "No space left on device"
    if full:
        return TrackingUnavailable(
            f"MLflow at {where} cannot write ({full}): free disk space under its database and artifacts, then "
            "re-run (dvc repro; the Prefect flow retries by itself)")
    first = redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else exc.__class__.__name__
    return TrackingError(f"MLflow at {where} failed: {first[:300]}: fix the tracking server or its storage "
                         "(MLFLOW_TRACKING_URI), then re-run (dvc repro)")
