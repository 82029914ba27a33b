"""Training checkpoints: the format, atomic saving, checked loading, the EMA weights sampling takes.

A checkpoint is a plain dict of tensors and Python values (no pickled code: loaded with
weights_only=True): the format number, the training parameters it was made with (`config`,
Config.training_dict()), the step, the loss history, the raw and EMA weights (and, with
train.autoguide_at, the EMA weights of that step: `guide`), the optimizer, LR schedule and batch-order
states and the RNG states, so that training resumes exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from ddpm.config import Config, config_from_checkpoint
from ddpm.errors import CheckpointError
from ddpm.io import save_torch
from ddpm.unet import UNet

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
