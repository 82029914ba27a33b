"""Classifier guidance (Dhariwal & Nichol 2021): the `cond_fn` the samplers take, from a noise-aware classifier.

`cond_fn(x_t, t) = s grad_x log p(y | x_t, t)` for each sample's label y, from the classifier of ddpm.noisy_classifier
(its file: ddpm.noisy_classifier_io); ddpm.samplers adds it to DDPM's mean (Sigma cond_fn, Algorithm 1) and to the
other samplers' eps (-sqrt(1 - abar_t) cond_fn, Algorithm 2). The sampling steps run without autograd, so cond_fn
turns it on for itself, as guided-diffusion's scripts/classifier_sample.py does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ddpm.samplers import CondFn


def classifier_cond_fn(classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], labels: torch.Tensor,
                       scale: float) -> CondFn:
    """s grad_x log p(labels | x_t, t) of `classifier` ((x_t, t) -> logits): guided-diffusion's cond_fn, for the
    batch whose labels these are."""
    rows = torch.arange(len(labels), device=labels.device)

    def cond_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
            grad, = torch.autograd.grad(log_probs[rows, labels].sum(), x_in)
        return scale * grad

    return cond_fn

