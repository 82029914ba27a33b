"""Loaded at start-up by processes that tests/test_kill.py starts with this folder on PYTHONPATH.

DDPM_KILL=during-snapshot:N  SIGKILL halfway through writing the N-th snapshot file
DDPM_KILL=after-snapshot:N   SIGKILL right after the N-th snapshot and its checksum are complete
DDPM_KILL_ONCE=PATH          ... only if PATH does not exist yet (it is created at the kill): the retry runs on;
                             checked at the kill point, not at start-up, since `dvc repro` is a Python
                             process too and loads this file before the stage it starts
DDPM_SLOW_STEPS=S            sleep S seconds in every snapshot-free training step (time to signal it)
DDPM_FILE_SIZE_LIMIT=BYTES   RLIMIT_FSIZE: a write past BYTES fails as on a full disk (EFBIG)

It sets the CPU kernels' environment of runtime.cpu_isa itself, since DDPM_SLOW_STEPS loads torch before the
stage does.
"""

import os
import signal

from ddpm.config.groups import CPU_KERNEL_ENV, RuntimeConfig

os.environ.update(CPU_KERNEL_ENV[RuntimeConfig.cpu_isa])  # the tiny profile's, before anything here loads torch
_kill = os.environ.get("DDPM_KILL")
_slow = os.environ.get("DDPM_SLOW_STEPS")
_limit = os.environ.get("DDPM_FILE_SIZE_LIMIT")

if _limit:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(_limit), int(_limit)))

if _kill:
    import ddpm.io

    _point, _n = _kill.split(":")
    _seen = {"snapshots": 0}

    def _die(before=lambda: None):
        once = os.environ.get("DDPM_KILL_ONCE")
        if once:
            if os.path.exists(once):
                return
            open(once, "w").close()
        before()
        os.kill(os.getpid(), signal.SIGKILL)

    def _truncate(tmp):  # the write got halfway
        with open(tmp, "r+b") as f:
            f.truncate(os.path.getsize(tmp) // 2)
    _atomic_path, _write_text = ddpm.io.atomic_path, ddpm.io.write_text

    def _killing_atomic_path(path):
        from contextlib import contextmanager

        @contextmanager
        def wrapped():
            with _atomic_path(path) as tmp:
                yield tmp
                if os.path.basename(str(path)).startswith("step-") and str(path).endswith(".pt"):
                    _seen["snapshots"] += 1
                    if _point == "during-snapshot" and _seen["snapshots"] == int(_n):
                        _die(lambda: _truncate(tmp))
        return wrapped()

    def _killing_write_text(path, text):
        _write_text(path, text)
        if _point == "after-snapshot" and str(path).endswith(".pt.sha256") and _seen["snapshots"] == int(_n):
            _die()

    ddpm.io.atomic_path = _killing_atomic_path
    ddpm.io.write_text = _killing_write_text

if _slow:
    import time

    import ddpm.data

    _to_model_input = ddpm.data.to_model_input

    def _slow_to_model_input(batch):
        time.sleep(float(_slow))
        return _to_model_input(batch)

    ddpm.data.to_model_input = _slow_to_model_input
