"""Sample-quality metrics on features: Frechet distance and class coverage.

    FD(N(mu1, S1), N(mu2, S2)) = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

computed in float64. Class coverage compares the classifier's verdicts on samples with the
class shares of the real data: a mode-collapsed generator misses classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from ddpm.errors import DataError


@dataclass(frozen=True)
class GaussianStats:
    mu: np.ndarray
    sigma: np.ndarray
    n: int


def gaussian_stats(features: np.ndarray) -> GaussianStats:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise DataError(f"need at least 2 feature vectors for a covariance, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise DataError("features contain NaN or inf: the samples or the feature extractor are broken")
    return GaussianStats(features.mean(axis=0), np.cov(features, rowvar=False), len(features))


def frechet_distance(a: GaussianStats, b: GaussianStats, eps: float = 1e-6) -> float:
    diff = a.mu - b.mu
    covmean, _ = linalg.sqrtm(a.sigma @ b.sigma, disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise, as the reference code does
        offset = np.eye(len(a.sigma)) * eps
        covmean = linalg.sqrtm((a.sigma + offset) @ (b.sigma + offset))
    covmean = covmean.real
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * np.trace(covmean))


def class_coverage(probs: np.ndarray, data_labels: np.ndarray, class_names: list[str],
                   confidence: float) -> dict:
    """Per-class shares of predicted samples against the data's shares; missing classes."""
    k = len(class_names)
    predicted = probs.argmax(axis=1)
    sample_share = np.bincount(predicted, minlength=k) / len(predicted)
    data_share = np.bincount(data_labels, minlength=k) / len(data_labels)
    return {
        "confident_share": float((probs.max(axis=1) >= confidence).mean()),
        "missing_classes": [class_names[i] for i in range(k) if sample_share[i] == 0],
        # total variation distance between the two class distributions (0 = same shares)
        "class_share_tv": float(0.5 * np.abs(sample_share - data_share).sum()),
        "per_class": {class_names[i]: {"samples": float(sample_share[i]), "data": float(data_share[i])}
                      for i in range(k)},
    }
