"""A small CNN classifier on the prepared data: class verdicts and a fast domain feature space.

Its penultimate layer (after global pooling) is the `domain` feature space: Frechet distance
there is a fast stand-in for FID on digit-like data, and its class predictions measure
class coverage of generated samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ddpm.batches import read_images
from ddpm.config.groups import ClassifierConfig
from ddpm.errors import CheckpointError

log = logging.getLogger(__name__)


class DomainClassifier(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.channels, self.num_classes, self.width = channels, num_classes, width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.body = nn.Sequential(block(channels, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2),
                                  block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    @property
    def feature_dim(self) -> int:
        return 4 * self.width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_classifier(
    images: np.ndarray, labels: np.ndarray, cfg: ClassifierConfig, *, seed: int = 0, progress: bool = True
) -> DomainClassifier:
    """Adam with a one-cycle LR on uint8 NHWC images; light translation augmentation."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    num_classes = int(labels.max()) + 1
    model = DomainClassifier(images.shape[-1], num_classes, cfg.width)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    steps_per_epoch = max(1, len(images) // cfg.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    model.train()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="classifier", disable=not progress, dynamic_ncols=True)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(images), generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = _to_input(read_images(images, idx.numpy()))  # a batch at a time: the data set stays on disk
            shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


@dataclass
class Predictions:
    features: np.ndarray  # (N, D) float64
    probs: np.ndarray  # (N, K)


@torch.no_grad()
def predict(model: DomainClassifier, images: np.ndarray, batch_size: int = 500) -> Predictions:
    model.eval()
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f = model.features(_to_input(images[i:i + batch_size]))
        feats.append(f.double().numpy())
        probs.append(F.softmax(model.head(f), dim=1).double().numpy())
    return Predictions(np.concatenate(feats), np.concatenate(probs))


def classifier_state(model: DomainClassifier) -> dict:
    return {"channels": model.channels, "num_classes": model.num_classes, "width": model.width,
            "state_dict": model.state_dict()}


def classifier_from_state(state: dict) -> DomainClassifier:
    model = DomainClassifier(state["channels"], state["num_classes"], state["width"])
    model.load_state_dict(state["state_dict"])
    return model.eval()


def load_classifier(path: str | Path) -> DomainClassifier:
    """The classifier stage's model from its file (weights only, no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"domain classifier {path} not found: run the classifier stage first (dvc repro)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return classifier_from_state(state)
    except Exception as exc:  # truncated file, another format, pickled code
        raise CheckpointError(f"domain classifier {path} cannot be read ({exc.__class__.__name__}): delete it and "
                              "re-run the classifier stage (dvc repro)") from None
