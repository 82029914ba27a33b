"""The two densities the variational bound of a diffusion model is made of, with improved-diffusion's names
and meaning (Nichol & Dhariwal 2021, `losses.py`): the KL divergence between Gaussians (the terms L_{t-1} and
the prior L_T) and the discretized Gaussian decoder (the term L_0). Both are elementwise and in nats.

Unlike improved-diffusion, the normal CDF is the exact one (torch.special.ndtr, not a tanh approximation), and
the log-probability of a bin is computed from log-CDFs, so a bin far in a tail keeps its digits instead of
being clamped at 1e-12.
"""

from __future__ import annotations

import torch

BIN_HALF_WIDTH = 1.0 / 255.0  # 8-bit data in [-1, 1]: 256 bins of width 2 / 255 centred on the pixel values
EDGE = 0.999  # values beyond +-EDGE are the outer bins, open to +-infinity


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats; the arguments broadcast."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2).square() * torch.exp(-logvar2))


def _log_normal_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for lower < upper, computed on the side of 0 where both CDFs are small."""
    flip = lower > 0  # Phi(b) - Phi(a) = Phi(-a) - Phi(-b)
    lower, upper = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_upper, log_lower = torch.special.log_ndtr(upper), torch.special.log_ndtr(lower)
    return log_upper + torch.log(-torch.expm1(log_lower - log_upper))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log P(x) under N(means, exp(log_scales)^2) discretized to x's 8-bit bin, elementwise, in nats.

    x is in [-1, 1] on the 256 values of 8-bit data; the bin of x is [x - 1/255, x + 1/255], the lowest one
    (-inf, -1 + 1/255] and the highest [1 - 1/255, inf), so the 256 bins' probabilities sum to 1.
    """
    inv_scale = torch.exp(-log_scales)
    upper = (x - means + BIN_HALF_WIDTH) * inv_scale
    lower = (x - means - BIN_HALF_WIDTH) * inv_scale
    return torch.where(x < -EDGE, torch.special.log_ndtr(upper),
                       torch.where(x > EDGE, torch.special.log_ndtr(-lower), _log_normal_mass(lower, upper)))
