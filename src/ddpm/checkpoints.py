"""Training checkpoints: the format, atomic saving, checked loading, the EMA weights sampling takes, snapshots.

A checkpoint is a plain dict of tensors and Python values (no pickled code: loaded with
weights_only=True): the format number, the training parameters it was made with (`config`,
Config.training_dict()), the step, the loss history, the raw and EMA weights (and, with
train.autoguide_at, the EMA weights of that step: `guide`), the optimizer, LR schedule and batch-order
states and the RNG states, so that training resumes exactly.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ddpm.config import Config, config_from_checkpoint
from ddpm.errors import CheckpointError
from ddpm.io import save_torch, sha256_file, write_text
from ddpm.unet import UNet

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    save_torch(path, state)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: run the train stage first (dvc repro train)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, wrong format, pickled code
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.__class__.__name__}): "
                              "delete it and re-run the train stage") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a format-{CHECKPOINT_FORMAT} DDPM checkpoint: "
                              "re-run the train stage")
    return state


class EMAWeights(NamedTuple):
    """What sampling takes from a checkpoint; ddpm.guidance.sampler_model composes the model from it."""

    ema: UNet
    guide: UNet | None  # the EMA weights at train.autoguide_at, that autoguidance guides with; None without it
    config: Config  # the configuration the weights were trained with


def load_ema_weights(path: str | Path, device: torch.device | str = "cpu") -> EMAWeights:
    """The EMA U-Net of a checkpoint file, its guide's and its training configuration, in eval mode on `device`."""
    return ema_weights_from_state(load_checkpoint(path), device)


def ema_weights_from_state(state: dict[str, Any], device: torch.device | str = "cpu") -> EMAWeights:
    """load_ema_weights for a checkpoint's state already in memory (a TrainResult's `checkpoint`)."""
    cfg = config_from_checkpoint(state["config"])
    guide = state.get("guide")
    return EMAWeights(_ema_unet(cfg, state["ema"], device),
                      None if guide is None else _ema_unet(cfg, guide, device), cfg)


def _ema_unet(cfg: Config, ema_state: dict[str, Any], device: torch.device | str) -> UNet:
    model = UNet(cfg.model, cfg.data.image_size, cfg.data.channels)
    model.load_state_dict({k.removeprefix("module."): v for k, v in ema_state.items() if k != "n_averaged"})
    return model.to(device).eval()


class SnapshotStore:
    """Snapshots of a run in progress: `step-NNNNNNNN.pt` files in one folder, each with a SHA-256 beside it.

    A snapshot is written atomically (temporary file, then rename) and its checksum file after it,
    so a kill at any moment leaves the previous snapshots complete; the newest `keep` are kept.
    `latest` returns the newest snapshot whose checksum and contents check out and that was made
    with the given training parameters, and logs each one it skips and why.
    """

    def __init__(self, folder: str | Path, keep: int = 2):
        self.folder, self.keep = Path(folder), keep

    def paths(self) -> list[Path]:
        """Snapshot files, newest first."""
        return sorted(self.folder.glob("step-*.pt"), reverse=True)

    def save(self, step: int, state: dict[str, Any]) -> Path:
        path = self.folder / f"step-{step:08d}.pt"
        save_torch(path, state)
        write_text(path.with_suffix(".pt.sha256"), f"{sha256_file(path)}  {path.name}\n")
        for old in self.paths()[self.keep:]:
            old.with_suffix(".pt.sha256").unlink(missing_ok=True)
            old.unlink(missing_ok=True)
        return path

    def latest(self, training_config: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
        for path in self.paths():
            try:
                state = self._load_verified(path)
            except CheckpointError as exc:
                log.warning("skipping snapshot %s: %s", path, exc)
                continue
            if state["config"] != training_config:
                log.warning("skipping snapshot %s: it was written for other parameters", path)
                continue
            return path, state
        return None

    def clear(self) -> None:
        """Remove the folder: the run is complete (and a killed write's temporary file goes with it)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _load_verified(path: Path) -> dict[str, Any]:
        checksum = path.with_suffix(".pt.sha256")
        if not checksum.is_file():
            raise CheckpointError("no checksum file beside it (its write did not finish)")
        recorded = checksum.read_text().split()
        if not recorded or sha256_file(path) != recorded[0]:
            raise CheckpointError("its SHA-256 differs from the recorded one (truncated or corrupted)")
        return load_checkpoint(path)
