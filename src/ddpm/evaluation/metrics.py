"""Sample-quality metrics on features, computed by torch-fidelity, plus class coverage.

    FID(N(mu1, S1), N(mu2, S2)) = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

on float64 statistics; sFID is the same distance on Inception's spatial features (Nash et al.
2021). KID is the unbiased polynomial-kernel MMD^2 averaged over random subsets (mean and
std). The Inception Score is exp(E_x KL(p(y|x) || p(y))) from Inception's logits, mean and std
over splits (torch-fidelity's `isc`). Precision and recall use k-NN manifolds (Kynkaanniemi et
al. 2019, k = 3 as in "Diffusion models beat GANs"): precision is the share of samples inside the real
manifold, recall the share of real images inside the samples' manifold. Class coverage
compares the classifier's verdicts on samples with the class shares of the real data: a
mode-collapsed generator misses classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

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


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    out = fid_statistics_to_metric({"mu": a.mu, "sigma": a.sigma}, {"mu": b.mu, "sigma": b.sigma}, verbose=False)
    return float(out[KEY_METRIC_FID])


def kid(generated: np.ndarray, real: np.ndarray, subset_size: int, subsets: int, seed: int = 0) -> tuple[float, float]:
    """KID mean and std over `subsets` random subsets of `subset_size` from each set."""
    n = min(len(generated), len(real))
    if n < subset_size:
        raise DataError(f"KID needs at least evaluate.kid_subset_size = {subset_size} images per set, got {n}: "
                        "raise sample.num_samples or lower evaluate.kid_subset_size")
    out = kid_features_to_metric(torch.from_numpy(generated), torch.from_numpy(real), kid_subsets=subsets,
                                 kid_subset_size=subset_size, rng_seed=seed, verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def precision_recall(generated: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    n = min(len(generated), len(real))
    if n <= k:
        raise DataError(f"precision/recall with k = {k} neighbours needs more than {k} images per set, got {n}: "
                        "raise sample.num_samples or lower evaluate.pr_k")
    out = prc_features_to_metric(torch.from_numpy(generated).float(), torch.from_numpy(real).float(),
                                 prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


IS_SPLITS = 10  # as torch-fidelity's isc and the improved-gan code


def inception_score(logits: np.ndarray, seed: int = 0, splits: int = IS_SPLITS) -> dict[str, float | int]:
    """Inception Score from (N, classes) logits: per split exp(mean_x KL(p(y|x) || mean p(y|x))) over the
    split's images, then the splits' mean and std, computed by torch-fidelity's `isc_features_to_metric` (in
    float64, after one shuffle by `seed`). Below 2 * splits images there are N // 2 splits, each of 2 or more
    images (one image alone always gives 1); the number used is returned with the score."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) < 2 or not np.isfinite(logits).all():
        raise DataError(f"the Inception Score needs finite (N >= 2, classes) logits, got shape {logits.shape}")
    splits = max(1, min(splits, len(logits) // 2))
    out = isc_features_to_metric(torch.from_numpy(logits), splits=splits, shuffle=True, rng_seed=seed)
    return {"inception_score": float(out[KEY_METRIC_ISC_MEAN]), "inception_score_std": float(out[KEY_METRIC_ISC_STD]),
            "inception_score_splits": splits}


def confident_share(probs: np.ndarray, confidence: float) -> float:
    """Share of images whose most likely class has probability >= confidence."""
    return float((probs.max(axis=1) >= confidence).mean())


def class_coverage(probs: np.ndarray, data_labels: np.ndarray, class_names: list[str],
                   confidence: float) -> dict:
    """Per-class shares of predicted samples against the data's shares; missing classes."""
    k = len(class_names)
    predicted = probs.argmax(axis=1)
    sample_share = np.bincount(predicted, minlength=k) / len(predicted)
    data_share = np.bincount(data_labels, minlength=k) / len(data_labels)
    return {
        "confident_share": confident_share(probs, confidence),
        "missing_classes": [class_names[i] for i in range(k) if sample_share[i] == 0],
        # total variation distance between the two class distributions (0 = same shares)
        "class_share_tv": float(0.5 * np.abs(sample_share - data_share).sum()),
        "per_class": {class_names[i]: {"samples": float(sample_share[i]), "data": float(data_share[i])}
                      for i in range(k)},
    }
