"""SIGTERM and SIGINT (preemption, Ctrl-C) as requests to stop training at the next step boundary.

Torch-free, so that every stage entry point can name the exit without loading torch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training at a step boundary, after a snapshot was written."""

    def __init__(self, signal_name: str, step: int, snapshot: Path | None):
        self.signal_name, self.step, self.snapshot = signal_name, step, snapshot
        where = f"snapshot {snapshot} written" if snapshot else "no snapshot store, nothing kept"
        super().__init__(f"stopped by {signal_name} at step {step}; {where}: re-run to resume (dvc repro)")


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[], str | None]]:
    """Note SIGTERM and SIGINT instead of dying, so the loop can stop at a step boundary.

    Yields a function that returns the name of the first signal received, or None.
    """
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield lambda: None
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signal.Signals(signum).name))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
