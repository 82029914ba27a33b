"""Evaluation in the `domain` feature space: Frechet distance with its data floor, class coverage."""

from __future__ import annotations

import numpy as np

from ddpm.classifier import DomainClassifier, predict
from ddpm.data import Dataset
from ddpm.errors import DataError
from ddpm.metrics import class_coverage, frechet_distance, gaussian_stats


def check_samples(samples: np.ndarray, reference: np.ndarray) -> None:
    if samples.dtype != np.uint8 or samples.ndim != 4:
        raise DataError(f"samples must be uint8 (N, H, W, C), got {samples.dtype} {samples.shape}: re-run sample")
    if samples.shape[1:] != reference.shape[1:]:
        raise DataError(f"samples are {samples.shape[1:]} (H, W, C) but the data is {reference.shape[1:]}: "
                        "re-run train and sample after changing data parameters")
    if len(samples) < 2:
        raise DataError(f"{len(samples)} sample(s) cannot give a covariance: set sample.num_samples >= 2")


def evaluate_domain(classifier: DomainClassifier, samples: np.ndarray, train: Dataset, test: Dataset,
                    confidence: float, seed: int = 0) -> dict:
    """FD(samples, test) and the floor FD(real train images, test) at the same N; class coverage."""
    check_samples(samples, test.images)
    n = min(len(samples), len(train))
    floor_idx = np.random.default_rng(seed).permutation(len(train))[:n]
    generated, held_out = predict(classifier, samples), predict(classifier, test.images)
    real = predict(classifier, train.images[floor_idx])
    ref_stats = gaussian_stats(held_out.features)
    return {
        "domain": {
            "fd": frechet_distance(gaussian_stats(generated.features[:n]), ref_stats),
            "fd_data_floor": frechet_distance(gaussian_stats(real.features), ref_stats),
            "n_samples": int(n), "n_reference": len(test),
        },
        "coverage": {"n_samples": len(samples),
                     **class_coverage(generated.probs, test.labels, test.class_names, confidence)},
    }
