"""Snapshots of a run in progress and the final state of a finished one, each matched on the run's identity.

A run's identity is its training parameters (Config.training_dict(), a checkpoint's `config`) and its
origin: the SHA-256 of each prepared data file, the classifier its quality probes score with and the code
that shapes training (pipeline.train.run_origin). A snapshot of another identity is skipped with a line
saying why, never resumed, and never rotated away by this run.

A finished run keeps its checkpoint beside the snapshots (`finished.pt`, with `finished.json`: its SHA-256,
origin and metrics), outside DVC's outputs: DVC deletes a stage's outputs before running it, so a re-run
that finds its own finished run writes the outputs from it instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ddpm.checkpoints import load_checkpoint
from ddpm.errors import CheckpointError
from ddpm.io import save_torch, sha256_file, write_json, write_text

log = logging.getLogger(__name__)
# an origin part -> how a snapshot whose part differs is named in the line that skips it
ORIGIN_PARTS = {"data": "other prepared data", "probe": "another probe classifier", "code": "other code"}


def files_sha256(folder: str | Path) -> dict[str, str]:
    """The SHA-256 of every file under `folder`, by its path relative to it."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def code_sha256(files: Iterable[str | Path]) -> str:
    """One SHA-256 over the names and bytes of source files: a renamed module is other code too."""
    digest = hashlib.sha256()
    for name in sorted(Path(f).as_posix() for f in files):
        digest.update(f"{name}\0{sha256_file(name)}\n".encode())
    return digest.hexdigest()


class FinishedRun(NamedTuple):
    checkpoint: Path  # finished.pt: the run's checkpoint, byte for byte
    state: dict[str, Any]  # its contents (the loss history and the probes' scores the plots are written from)
    stats: dict[str, Any]  # TrainResult.stats: what the train metrics record


class SnapshotStore:
    """`step-NNNNNNNN.pt` snapshots in one folder, each with a SHA-256 beside it, and the finished run's state.

    A snapshot is written atomically (temporary file, then rename) and its checksum file after it,
    so a kill at any moment leaves the previous snapshots complete; the newest `keep` of this run's
    own are kept. `latest` returns the newest snapshot whose checksum and contents check out and that
    belongs to this run, and logs each one it skips and why. `origin` is what besides the training
    parameters makes the run (None: the parameters alone decide, for runs outside the pipeline).
    """

    def __init__(self, folder: str | Path, keep: int = 2, origin: dict[str, Any] | None = None):
        self.folder, self.keep, self.origin = Path(folder), keep, origin
        self.finished_checkpoint = self.folder / "finished.pt"
        self.finished_record = self.folder / "finished.json"

    def paths(self) -> list[Path]:
        """Snapshot files, newest first."""
        return sorted(self.folder.glob("step-*.pt"), reverse=True)

    def save(self, step: int, state: dict[str, Any]) -> Path:
        path = self.folder / f"step-{step:08d}.pt"
        save_torch(path, {**state, "run": self.origin})
        write_text(path.with_suffix(".pt.sha256"), f"{sha256_file(path)}  {path.name}\n")
        own = [p for p in self.paths() if p == path or self._recorded_identity(p) == (state["config"], self.origin)]
        for old in own[self.keep:]:
            _remove_snapshot(old)
        return path

    def latest(self, training_config: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
        for path in self.paths():
            try:
                state = _load_verified(path)
            except CheckpointError as exc:
                log.warning("skipping snapshot %s: %s", path, exc)
                continue
            other = self._differences(training_config, state["config"], state.get("run"))
            if other:
                log.warning("skipping snapshot %s: it was written for %s", path, other)
                continue
            return path, state
        return None

    def finished(self, training_config: dict[str, Any]) -> FinishedRun | None:
        """This run's finished state, when training already ended; None otherwise (with a line saying why
        when the finished run there is another run's or damaged)."""
        if not self.finished_record.is_file():
            return None
        try:
            record = json.loads(self.finished_record.read_text())
            if not self.finished_checkpoint.is_file() or sha256_file(self.finished_checkpoint) != record["sha256"]:
                raise CheckpointError("its SHA-256 differs from the recorded one (truncated or corrupted)")
            state = load_checkpoint(self.finished_checkpoint)
            stats, run = record["stats"], record["run"]
        except (CheckpointError, ValueError, KeyError, TypeError) as exc:  # a damaged file or record
            log.warning("not reusing finished run %s: %s", self.finished_checkpoint,
                        exc if isinstance(exc, CheckpointError) else f"{self.finished_record} is damaged")
            return None
        other = self._differences(training_config, state["config"], run)
        if other:
            log.warning("not reusing finished run %s: it was trained for %s", self.finished_checkpoint, other)
            return None
        return FinishedRun(self.finished_checkpoint, state, stats)

    def finish(self, checkpoint: dict[str, Any], stats: dict[str, Any]) -> FinishedRun:
        """Keep the finished run's checkpoint and metrics, and nothing else: every snapshot in the folder,
        this run's and any other's, is older than the checkpoint DVC is about to record."""
        self.finished_record.unlink(missing_ok=True)  # first: a record must never describe another run's file
        save_torch(self.finished_checkpoint, checkpoint)
        write_json(self.finished_record, {"sha256": sha256_file(self.finished_checkpoint), "run": self.origin,
                                          "stats": stats})
        for path in self.folder.iterdir():
            if path in (self.finished_checkpoint, self.finished_record):
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return FinishedRun(self.finished_checkpoint, checkpoint, stats)

    def _differences(self, training_config: dict[str, Any], config: Any, run: Any) -> str:
        """How a snapshot's identity differs from this run's, in words ("" when it is this run's)."""
        other = [] if config == training_config else ["other parameters"]
        if run != self.origin:
            if isinstance(run, dict) and isinstance(self.origin, dict):
                other += [words for key, words in ORIGIN_PARTS.items()
                          if run.get(key) != self.origin.get(key)] or ["another origin"]
            else:  # a snapshot from before origins were recorded, or a store that records none
                other.append("an unrecorded origin")
        return " and ".join(other)

    @staticmethod
    def _recorded_identity(path: Path) -> tuple[Any, Any] | None:
        """A snapshot's parameters and origin, read without its tensors (mmap); None when unreadable."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError):  # truncated, empty, foreign:
            # not provably this run's, so rotation leaves it
            return None
        return (state.get("config"), state.get("run")) if isinstance(state, dict) else None


def _remove_snapshot(path: Path) -> None:
    path.with_suffix(".pt.sha256").unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _load_verified(path: Path) -> dict[str, Any]:
    checksum = path.with_suffix(".pt.sha256")
    if not checksum.is_file():
        raise CheckpointError("no checksum file beside it (its write did not finish)")
    recorded = checksum.read_text().split()
    if not recorded or sha256_file(path) != recorded[0]:
        raise CheckpointError("its SHA-256 differs from the recorded one (truncated or corrupted)")
    return load_checkpoint(path)
