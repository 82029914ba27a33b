"""Batch generation: num_samples images from a trained U-Net (eps, v or x0 prediction) with the configured sampler;
a class-conditional U-Net draws each sample's configured label, with classifier-free guidance, and any U-Net can
be steered to each sample's label by a noisy classifier (classifier guidance, ddpm.classifier_guidance)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm.classifier_guidance import classifier_cond_fn
from ddpm.config.groups import SampleConfig
from ddpm.data import to_uint8_images
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError
from ddpm.guidance import sampler_model
from ddpm.runtime import Distributed, gather_objects, process_batches
from ddpm.samplers import PerSampleGenerators, sample
from ddpm.unet import UNet

if TYPE_CHECKING:
    from ddpm.noisy_classifier import NoisyClassifier


def sample_labels(cfg: SampleConfig, num_classes: int, classifier_classes: int | None = None) -> np.ndarray | None:
    """Sample i's label: cfg.classes[i % len(cfg.classes)], by default every class in turn (equal shares
    without drawing a random number); the classes are the model's, or for an unconditional model guided by a
    noisy classifier (cfg.classifier_scale > 0) the classifier's `classifier_classes`; None for an unconditional
    model without classifier guidance."""
    cfg.check_conditioning(num_classes, classifier_classes)
    known = num_classes or (classifier_classes if cfg.classifier_scale else 0)
    if not known and cfg.classes is None:
        return None
    classes = np.asarray(cfg.classes if cfg.classes is not None else range(known), dtype=np.int64)
    return classes[np.arange(cfg.num_samples) % len(classes)]


@torch.no_grad()
def generate(ema: UNet, diffusion: GaussianDiffusion, cfg: SampleConfig, *, guide: UNet | None = None,
             classifier: NoisyClassifier | None = None, device: torch.device | str = "cpu",
             progress: bool = True, processes: Distributed = Distributed()) -> np.ndarray:
    """cfg.num_samples images as uint8 NHWC, in batches, image i from its own generator seeded by (cfg.seed, i);
    labelled as `sample_labels`. Under torchrun (`processes`) rank r draws batches r, r + W, ... and every rank
    returns all the images, in index order: the same bytes as one process.

    Each batch samples the model ddpm.guidance.sampler_model composes for its labels: the EMA U-Net,
    autoguided by `guide` (the EMA at train.autoguide_at) at cfg.autoguidance, classifier-free guided at
    cfg.guidance; with cfg.classifier_scale > 0 each step is also classifier-guided towards the batch's labels
    by the noisy `classifier` (ddpm.noisy_classifier_io.load_noisy_classifier).
    """
    ema.eval()
    if guide is not None:
        guide.eval()
    if cfg.classifier_scale and classifier is None:
        raise CheckpointError(f"sample.classifier_scale = {cfg.classifier_scale:g} needs the noisy classifier: "
                              "run the noisy_classifier stage (dvc repro noisy_classifier), or set it to 0")
    classifier_classes = classifier.num_classes if cfg.classifier_scale else None
    labels = sample_labels(cfg, ema.num_classes, classifier_classes)
    shape = (ema.channels, ema.image_size, ema.image_size)
    out = {}
    for batch in tqdm(process_batches(cfg.num_samples, cfg.batch_size, processes), desc=f"sample ({cfg.sampler})",
                      disable=not progress, dynamic_ncols=True):
        n = len(batch)
        generator = PerSampleGenerators(cfg.seed, batch, device)
        batch_labels = None if labels is None else torch.from_numpy(labels[batch.start:batch.stop]).to(device)
        model = sampler_model(ema, guide, autoguidance=cfg.autoguidance,
                              labels=batch_labels if ema.num_classes else None, guidance=cfg.guidance)
        cond_fn = classifier_cond_fn(classifier, batch_labels, cfg.classifier_scale) if cfg.classifier_scale else None
        x = sample(model, diffusion, (n, *shape), sampler=cfg.sampler, steps=cfg.steps, eta=cfg.eta,
                   variance=cfg.variance, clip_denoised=cfg.clip_denoised, generator=generator, device=device,
                   cond_fn=cond_fn)
        if not torch.isfinite(x).all():
            raise CheckpointError("the sampler produced NaN or inf: the checkpoint has diverged; "
                                  "retrain with a lower train.lr")
        out[batch.start] = to_uint8_images(x)
    out = gather_objects(out, processes.world_size)
    return np.concatenate([out[i] for i in sorted(out)])
