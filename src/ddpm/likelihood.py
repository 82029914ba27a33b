"""The negative log-likelihood of 8-bit images in bits/dim: the variational bound of Ho et al. 2020 (eq. 5),
term by term as Nichol & Dhariwal 2021 compute it (improved-diffusion's `calc_bpd_loop`), summed per image:

    L = L_T + sum_{t=2..T} L_{t-1} + L_0 >= -log p(x_0)
    L_T     = KL(q(x_T | x_0) || N(0, I))                             the prior
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),  x_t ~ q(x_t | x_0)   one network call each
    L_0     = -log p(x_0 | x_1), the Gaussian discretized to x_0's 8-bit bin      the decoder

(in code's 0-based t: the decoder at t = 0 and KL terms at t = 1..T-1). Every term is averaged over the
image's dimensions and divided by log 2. The T - 1 KL terms cost a network call each; with `terms` = K
they are estimated by stratified sampling instead: 1..T-1 cut into at most K runs of consecutive timesteps,
growing geometrically, one t drawn uniformly in each and its term counted (run length) times, an unbiased
estimate of their sum per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm.data import to_model_input
from ddpm.diffusion import GaussianDiffusion, Model, Variance
from ddpm.losses import normal_kl
from ddpm.runtime import Distributed, gather_objects, process_batches
from ddpm.samplers import sample_seed


def prior_bpd(diffusion: GaussianDiffusion, x0: torch.Tensor) -> torch.Tensor:
    """L_T per image in bits/dim: q(x_T | x_0) against the N(0, I) that sampling starts from."""
    t = torch.full((x0.shape[0],), diffusion.num_timesteps - 1, device=x0.device, dtype=torch.long)
    mean, variance = diffusion.q_mean_variance(x0.double(), t)
    kl = normal_kl(mean, torch.log(variance), torch.zeros_like(mean), torch.zeros_like(mean))
    return kl.flatten(1).mean(1) / math.log(2.0)


def stratified_timesteps(num_timesteps: int, terms: int, batch: int, generator: torch.Generator
                         ) -> list[tuple[torch.Tensor, int]]:
    """(t per image, run length) for each of at most `terms` runs of 1..T-1, t uniform within its run.

    The runs grow geometrically: the terms of small t are the large ones and change fastest, so the first
    runs are single timesteps, counted exactly, and the long runs are where the terms are small and smooth."""
    edges = np.unique(np.round(np.geomspace(1, num_timesteps, terms + 1)).astype(int))
    draws = torch.rand(len(edges) - 1, batch, generator=generator, dtype=torch.float64)
    return [(lo + (u * (hi - lo)).long().clamp(max=hi - lo - 1), int(hi - lo))
            for lo, hi, u in zip(edges[:-1], edges[1:], draws)]


@torch.no_grad()
def bits_per_dim(model: Model, diffusion: GaussianDiffusion, x0: torch.Tensor, *, terms: int | None = None,
                 variance: Variance = "beta", clip_denoised: bool = True,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The bound per image of x0 (B, C, H, W) in [-1, 1] on the 8-bit grid, in bits/dim, float64 on the CPU:
    {"total", "prior", "kl" (the sum of the KL terms), "decoder"}.

    `terms`: None (or >= T - 1) sums every KL term; K estimates their sum from K stratified timesteps.
    `variance`: sigma_t^2 of a fixed-variance network (a network with learned variance uses its own).
    All noise, and the strata's draws, come from `generator` (on the CPU).
    """
    T, batch = diffusion.num_timesteps, x0.shape[0]

    def term(t: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        t = t.to(x0.device)
        x_t = diffusion.q_sample(x0, t, noise)
        return diffusion.vb_terms_bpd(model(x_t, t), x0, x_t, t, variance=variance,
                                      clip_denoised=clip_denoised).cpu()

    decoder = term(torch.zeros(batch, dtype=torch.long))
    if terms is None or terms >= T - 1:
        runs = [(torch.full((batch,), t, dtype=torch.long), 1) for t in range(1, T)]
    else:
        runs = stratified_timesteps(T, terms, batch, generator)
    kl = sum((length * term(t) for t, length in runs), torch.zeros(batch, dtype=torch.float64))
    prior = prior_bpd(diffusion, x0).cpu()
    return {"total": prior + kl + decoder, "prior": prior, "kl": kl, "decoder": decoder}


def dataset_bits_per_dim(model: Callable[..., torch.Tensor], diffusion: GaussianDiffusion, images: np.ndarray,
                         labels: np.ndarray | None = None, *, terms: int | None, variance: Variance,
                         clip_denoised: bool, batch_size: int, seed: int, device: torch.device | str = "cpu",
                         progress: bool = False, processes: Distributed = Distributed()) -> dict[str, float]:
    """The bound on uint8 NHWC `images` in bits/dim: its mean over the images with the standard error of that
    mean (which holds the estimator's noise with the images' spread), N, and the mean of each part.

    A class-conditional `model` (labels given) is scored as p(x | y) with each image's own label, as
    improved-diffusion's image_nll.py does. Each batch's noise and strata come from its own generator, seeded
    by (`seed`, the batch's first index), so under torchrun (`processes`) the ranks split the batches
    (ddpm.runtime.process_batches) and every rank returns one process's numbers.
    """
    parts = {}
    for batch in tqdm(process_batches(len(images), batch_size, processes), desc="bits/dim", disable=not progress,
                      dynamic_ncols=True):
        x0 = to_model_input(torch.from_numpy(images[batch.start:batch.stop])).to(device)
        y = None if labels is None else torch.from_numpy(labels[batch.start:batch.stop]).to(device)
        network = model if y is None else (lambda x_t, t, y=y: model(x_t, t, y))
        parts[batch.start] = bits_per_dim(network, diffusion, x0, terms=terms, variance=variance,
                                          clip_denoised=clip_denoised,
                                          generator=torch.Generator().manual_seed(sample_seed(seed, batch.start)))
    parts = gather_objects(parts, processes.world_size)  # bits_per_dim's tensors are on the CPU
    per_image = {name: torch.cat([parts[start][name] for start in sorted(parts)]) for name in parts[0]}
    total, n, all_terms = per_image["total"], len(images), diffusion.num_timesteps - 1
    return {"bits_per_dim": total.mean().item(),
            "standard_error": (total.std() / math.sqrt(n)).item() if n > 1 else math.nan, "n": n,
            "terms": all_terms if terms is None else min(terms, all_terms),
            **{name: per_image[name].mean().item() for name in ("prior", "kl", "decoder")}}
