"""The noisy classifier's file (ddpm.noisy_classifier; classifier guidance, ddpm.classifier_guidance).

The file (models/noisy_classifier.pt) is a dict of tensors and plain values, read with weights_only=True: the
format, the classifier's config, the diffusion it was trained for (timesteps and schedule: loading refuses another
generator's chain), the image shape, the classes and the weights. When nothing asks for classifier guidance the
stage writes a JSON marker in its place instead (`write_not_trained`), which needs no torch and takes no time.
This module loads torch only where a function needs it, so that marker costs a stage no torch import.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpm.errors import CheckpointError
from ddpm.io import save_torch, write_json

if TYPE_CHECKING:
    import torch

    from ddpm.config.training import DiffusionConfig
    from ddpm.noisy_classifier import NoisyClassifier

FORMAT = 1
RETRAIN = "re-run the noisy_classifier stage (dvc repro noisy_classifier)"


def diffusion_record(cfg: DiffusionConfig) -> dict[str, Any]:
    """What of the chain a noisy classifier is trained for: T and the schedule's abar (prediction does not matter)."""
    schedule = ({"beta_start": cfg.beta_start, "beta_end": cfg.beta_end} if cfg.schedule == "linear"
                else {"cosine_s": cfg.cosine_s})
    return {"timesteps": cfg.timesteps, "schedule": cfg.schedule, **schedule}


def write_not_trained(path: str | Path, reason: str) -> None:
    """The small file of a stage that trained nothing: valid, and saying so (JSON; no torch)."""
    write_json(path, {"noisy_classifier": "not trained", "format": FORMAT, "reason": reason})


def save_noisy_classifier(path: str | Path, model: NoisyClassifier, diffusion: DiffusionConfig,
                          history: list[float]) -> None:
    """Atomically, with the same bytes for the same weights (ddpm.io.save_torch)."""
    save_torch(path, {"format": FORMAT, "kind": "noisy_classifier", "config": dataclasses.asdict(model.cfg),
                      "diffusion": diffusion_record(diffusion), "image_size": model.image_size,
                      "channels": model.channels, "num_classes": model.num_classes, "epoch_losses": history,
                      "state_dict": model.state_dict()})


def load_noisy_classifier(path: str | Path, diffusion: DiffusionConfig,
                          device: torch.device | str = "cpu") -> NoisyClassifier:
    """The trained classifier of `path` for a generator on the chain `diffusion`, in eval mode without gradients
    of its own; a missing, untrained, unreadable or other-chain file is one line naming the fix."""
    import torch

    from ddpm.config.groups import NoisyClassifierConfig
    from ddpm.config.parsing import build
    from ddpm.noisy_classifier import NoisyClassifier

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"noisy classifier {path} not found: {RETRAIN}")
    if path.read_bytes()[:1] == b"{":
        reason = json.loads(path.read_text()).get("reason", "nothing asked for classifier guidance")
        raise CheckpointError(f"noisy classifier {path} was not trained ({reason}): set sample.classifier_scale "
                              f"or sweep.classifier_scales > 0 and {RETRAIN}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert isinstance(state, dict) and state.get("kind") == "noisy_classifier"
    except Exception as exc:  # truncated, another format, pickled code
        raise CheckpointError(f"noisy classifier {path} cannot be read ({exc.__class__.__name__}): delete it and "
                              f"{RETRAIN}") from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"noisy classifier {path} is not a format-{FORMAT} file: {RETRAIN}")
    want, got = diffusion_record(diffusion), state["diffusion"]
    if got != want:
        differ = ", ".join(f"{k} {got.get(k)} (the generator's: {want.get(k)})"
                           for k in sorted(set(want) | set(got)) if got.get(k) != want.get(k))
        raise CheckpointError(f"noisy classifier {path} was trained for another diffusion: {differ}; set the "
                              f"generator's diffusion in params.yaml and {RETRAIN}")
    model = NoisyClassifier(build(NoisyClassifierConfig, state["config"], "noisy_classifier."), state["image_size"],
                            state["channels"], state["num_classes"])
    model.load_state_dict(state["state_dict"])
    return model.requires_grad_(False).to(device).eval()
