"""One retraining run per workspace: a file lock in .dvc/tmp, with a note of who holds it."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LOCK = Path(".dvc/tmp/retrain.lock")  # .dvc/tmp is DVC's own scratch folder, ignored by git
LOCK_OWNER = Path(".dvc/tmp/retrain.lock.json")  # who holds LOCK, for the waiting run's message

log = logging.getLogger("pipeline.flows.retrain")


class WorkspaceBusy(RuntimeError):
    """Another retraining run holds the workspace lock."""


@contextmanager
def workspace_lock(root: Path, timeout_s: float, holder: str, logger: Any = log) -> Iterator[None]:
    """Hold the workspace's lock, waiting up to `timeout_s` for another run to release it.

    The lock is released by the OS if its process dies. DVC's own lock (.dvc/tmp/lock) is separate:
    it guards each `dvc repro` call, so a manual `dvc repro` during a flow run makes the running
    stage's task fail and retry with back-off.
    """
    from filelock import FileLock, Timeout

    lock_path, owner = root / LOCK, root / LOCK_OWNER
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(blocking=False)
    except Timeout:  # held by another run
        who = lock_holder(root)
        if timeout_s <= 0:
            raise WorkspaceBusy(f"workspace {root} is busy: {who} holds {LOCK}; not waiting (lock_timeout_s=0): "
                                "try again when it has finished")
        logger.warning("workspace %s is busy: %s holds %s; waiting up to %g s", root, who, LOCK, timeout_s)
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise WorkspaceBusy(f"workspace {root} is busy: {who} held {LOCK} for all of lock_timeout_s={timeout_s:g} "
                                "s: try again when it has finished, or raise lock_timeout_s") from None
        logger.info("workspace lock acquired after waiting")
    try:
        since = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        owner.write_text(json.dumps({"holder": holder, "pid": os.getpid(), "host": socket.gethostname(),
                                     "since": since}) + "\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def lock_holder(root: Path) -> str:
    """Who holds the lock, as the note in LOCK_OWNER says ("another process" without a readable note)."""
    try:
        info = json.loads((root / LOCK_OWNER).read_text())
        return f"{info['holder']} (pid {info['pid']} on {info['host']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
