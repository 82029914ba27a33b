"""Classifier-free guidance (Ho & Salimans 2022) and autoguidance (Karras et al. 2024) in the terms of
ddpm.diffusion.

Training drops each label to the null class with probability p (`drop_labels`), so that one
network is both the conditional model f(x_t, t, y) and the unconditional one f(x_t, t, null).
Sampling turns a conditional U-Net and the batch's labels into a diffusion `Model`, (x_t, t) ->
prediction, that every sampler (DDPM, DDIM, DPM-Solver++) calls as it calls an unconditional one:

    guided = (1 + w) f(x_t, t, y) - w f(x_t, t, null)

Whatever the network predicts (eps, v or x0), the two weights sum to 1 and, at a fixed x_t, eps,
v and x0 are affine in one another: guiding any of them is guiding eps. A network with learned variance
guides its prediction and keeps the guided model's own variance (as GLIDE does): extrapolated, the variance
values could leave the range between beta~_t and beta_t.

Autoguidance guides a model with a weaker version of itself instead of with its unconditional
half, so it serves unconditional models too: guided = (1 + w) D(x_t) - w D_guide(x_t), Karras et
al.'s D_1 + w' (D_0 - D_1) with w' = 1 + w. Here the guide is the same run's EMA weights from an
earlier step (train.autoguide_at): the weaker model errs where the stronger one does, only more,
so extrapolating from it away pushes samples from where both are wrong toward the data.

`sampler_model` composes the two into what a sampler calls; the samplers (ddpm.samplers) know neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ddpm.errors import CheckpointError

if TYPE_CHECKING:
    from ddpm.diffusion import Model


def drop_labels(labels: torch.Tensor, uniform: torch.Tensor, p: float, null_class: int) -> torch.Tensor:
    """Each label replaced by `null_class` where its U(0, 1) draw is below p.

    The draws are the caller's, so that training takes them from its checkpointed RNG, as it
    takes the timesteps and the noise.
    """
    return torch.where(uniform < p, torch.full_like(labels, null_class), labels)


def guide(cond: torch.Tensor, uncond: torch.Tensor, guidance: float, learned_variance: bool = False) -> torch.Tensor:
    """(1 + w) cond - w uncond: w = 0 is the conditional prediction, w > 0 pushes away from the unconditional.
    With `learned_variance` only the prediction (the first half of the channels) is guided; the variance is cond's."""
    if learned_variance:
        (cond, variance), (uncond, _) = cond.chunk(2, dim=1), uncond.chunk(2, dim=1)
        return torch.cat([guide(cond, uncond, guidance), variance], dim=1)
    return (1.0 + guidance) * cond - guidance * uncond


def guided(model: Callable[..., torch.Tensor], labels: torch.Tensor, guidance: float, null_class: int,
           learned_variance: bool = False) -> Model:
    """The diffusion Model of a conditional U-Net for these labels at guidance weight w.

    w = 0 is one plain conditional call (the bytes of an unguided sampler). Otherwise the
    conditional and null rows go through the network as one batch of 2B: one call per step.
    """
    if not guidance:
        return lambda x_t, t: model(x_t, t, labels)
    null = torch.full_like(labels, null_class)

    def call(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = both.chunk(2)
        return guide(cond, uncond, guidance, learned_variance)

    return call


def sampler_model(ema: torch.nn.Module, guide_ema: torch.nn.Module | None = None, *, autoguidance: float = 0.0,
                  labels: torch.Tensor | None = None, guidance: float = 0.0) -> Model:
    """The diffusion Model a sampler calls, composed here and nowhere else: the EMA U-Net, autoguided by
    `guide_ema` at weight `autoguidance` (0: the EMA alone), then, given a batch's `labels`, classifier-free
    guided at `guidance` (without labels a conditional U-Net predicts for its null class).

    Classifier-free guidance goes outside autoguidance, so that each of the two models is guided by its own
    null class: one batch of 2B through both networks per step.
    """
    if autoguidance and guide_ema is None:
        raise CheckpointError("the checkpoint keeps no weights to autoguide with: set train.autoguide_at "
                              "(e.g. 0.33) and retrain, or set sample.autoguidance: 0")

    def autoguided(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return guide(ema(x_t, t, y), guide_ema(x_t, t, y), autoguidance, learned)

    learned = ema.cfg.learn_sigma
    network = autoguided if autoguidance else ema
    if labels is None:
        return network
    return guided(network, labels, guidance, null_class=ema.num_classes, learned_variance=learned)
