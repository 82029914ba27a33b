"""The exponential moving average of the weights: constant decay, or EDM2's power-function profile.

train.py applies it after every optimizer step, to the sampled EMA and to autoguidance's guide.
"""

from __future__ import annotations

import numpy as np


def power_ema_gamma(sigma_rel: float) -> float:
    """The exponent gamma of the power-function EMA whose profile has relative std sigma_rel.

    EDM2 (Karras et al. 2024, eq. 3): sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)),
    i.e. the largest real root of gamma^3 + 7 gamma^2 + (16 - t) gamma + 12 - t, t = sigma_rel^-2.
    """
    t = sigma_rel**-2
    return float(np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max())


def ema_beta(step: int, decay: float, gamma: float | None) -> float:
    """The EMA's decay at its `step`-th update (1-based): constant, or (1 - 1/step)^(gamma + 1).

    The power form weights the weights after update s by (1 - beta_s) (s / n)^(gamma + 1) after
    n updates, about (gamma + 1) s^gamma / n^(gamma + 1): an average over a fixed share of the run.
    """
    if gamma is None:
        return decay
    return (1.0 - 1.0 / step) ** (gamma + 1.0)
