"""Precision/recall's k-NN manifolds against an independent computation, and the data floor at the samples' N.

(benchmarks/mutants.py names the mutants these tests kill.)
"""

import numpy as np
import pytest

from ddpm.config.groups import EvaluateConfig
from ddpm.evaluation.metrics import frechet_distance, gaussian_stats, precision_recall
from ddpm.evaluation.scores import Reference, evaluate_space, fid_with_floor


def knn_share(points: np.ndarray, manifold: np.ndarray, k: int) -> float:
    """Kynkaanniemi et al. 2019: the share of `points` inside some ball around a manifold point whose radius is
    the distance to that point's k-th nearest other manifold point."""
    within = np.linalg.norm(manifold[:, None] - manifold[None], axis=-1)
    radii = np.sort(within, axis=1)[:, k]  # column 0 is the point itself
    to = np.linalg.norm(points[:, None] - manifold[None], axis=-1)
    return float((to <= radii[None]).any(axis=1).mean())


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_and_recall_use_a_neighbourhood_of_k(k):
    rng = np.random.default_rng(k)
    real = rng.standard_normal((40, 4))
    generated = rng.standard_normal((30, 4)) * 1.4 + 0.4
    precision, recall = precision_recall(generated, real, k=k)
    assert precision == pytest.approx(knn_share(generated, real, k), abs=1e-6)
    assert recall == pytest.approx(knn_share(real, generated, k), abs=1e-6)
    # (torch-fidelity counts in float32: shares of 30 or 40 points are told apart far above abs=1e-6)


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(7)
    space = "domain"
    test = {"features": rng.standard_normal((60, 3))}
    # a floor with far more images than samples, its later images unlike the first: N matters
    floor = {"features": np.concatenate([rng.standard_normal((12, 3)), rng.standard_normal((48, 3)) * 3 + 2])}
    samples = {"features": rng.standard_normal((12, 3)) * 1.2 + 0.3}
    return samples, Reference(space, "weights", test, floor)


def test_the_data_floor_is_measured_at_the_samples_n(sets):
    samples, ref = sets
    cfg = EvaluateConfig(kid_subset_size=6, kid_subsets=4, pr_k=3)
    out = evaluate_space(samples, ref, "features", cfg)
    first = ref.floor["features"][:12]
    assert out["n_samples"] == 12 and out["floor"]["n_samples"] == 12
    assert out["floor"]["fid"] == pytest.approx(
        frechet_distance(gaussian_stats(first), gaussian_stats(ref.test["features"])), rel=1e-9)
    assert (out["floor"]["precision"], out["floor"]["recall"]) == pytest.approx(
        (knn_share(first, ref.test["features"], 3), knn_share(ref.test["features"], first, 3)), abs=1e-6)


def test_the_sweeps_floor_is_measured_at_the_samples_n(sets):
    samples, ref = sets
    out = fid_with_floor(samples, ref, "features")
    test = gaussian_stats(ref.test["features"])
    assert out["n_floor"] == 12
    assert out["fid"] == pytest.approx(frechet_distance(gaussian_stats(samples["features"]), test), rel=1e-9)
    assert out["fid_floor"] == pytest.approx(frechet_distance(gaussian_stats(ref.floor["features"][:12]), test),
                                             rel=1e-9)
