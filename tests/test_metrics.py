"""FID and KID against independent float64 computations, precision/recall on an asymmetric case; class coverage."""

import numpy as np
import pytest
from scipy import linalg

from ddpm.evaluation.metrics import class_coverage, frechet_distance, gaussian_stats, kid, precision_recall


def frechet_by_matrix_sqrt(f1, f2):
    """Independent route, the formula itself in float64: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2),
    with the matrix square root from scipy (torch-fidelity goes through eigenvalues instead)."""
    mu1, mu2 = f1.astype(np.float64).mean(0), f2.astype(np.float64).mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_matches_independent_computation():
    rng = np.random.default_rng(0)
    f1 = rng.standard_normal((500, 16))
    f2 = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16)) * 0.5 + 0.3
    got = frechet_distance(gaussian_stats(f1), gaussian_stats(f2))
    assert got == pytest.approx(frechet_by_matrix_sqrt(f1, f2), rel=1e-6)


def test_frechet_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    f = np.random.default_rng(1).standard_normal((300, 8))
    s = gaussian_stats(f)
    assert abs(frechet_distance(s, s)) < 1e-8
    assert frechet_distance(s, gaussian_stats(f + 1.0)) == pytest.approx(8.0, rel=1e-6)


def unbiased_mmd2_cubic(x, y):
    """Independent route: the unbiased MMD^2 estimate with k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018),
    the diagonal of the within-set kernels left out."""
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return within - 2 * kxy.mean()


def test_kid_of_whole_sets_is_the_unbiased_cubic_mmd():
    """subset_size = n and one subset: no sampling, so the value is the estimator itself (order does not matter)."""
    rng = np.random.default_rng(2)
    generated = rng.standard_normal((60, 12)) * 1.3 + 0.2
    real = rng.standard_normal((60, 12))
    mean, std = kid(generated, real, subset_size=60, subsets=1)
    assert mean == pytest.approx(unbiased_mmd2_cubic(generated, real), rel=1e-9)
    assert std == 0.0


def test_kid_subsets_are_drawn_as_torch_fidelity_draws_them():
    """mean and std over subsets drawn like torch-fidelity's metric_kid.py: one RandomState(seed), per subset
    `choice(n, size, replace=False)` from the generated set, then from the real set."""
    rng = np.random.default_rng(3)
    generated, real = rng.standard_normal((80, 6)) + 0.5, rng.standard_normal((90, 6))
    draw = np.random.RandomState(7)
    mmds = []
    for _ in range(5):
        g = generated[draw.choice(80, 30, replace=False)]
        mmds.append(unbiased_mmd2_cubic(g, real[draw.choice(90, 30, replace=False)]))
    mean, std = kid(generated, real, subset_size=30, subsets=5, seed=7)
    assert (mean, std) == (pytest.approx(np.mean(mmds), rel=1e-9), pytest.approx(np.std(mmds), rel=1e-9))


def test_precision_and_recall_are_not_swapped():
    """Generated = real images from one tight region: every sample lies on the real manifold (precision 1), but
    the samples' manifold covers few real images (recall low). Swapped arguments give the reverse."""
    rng = np.random.default_rng(0)
    real = rng.standard_normal((400, 8))
    central = np.argsort(np.linalg.norm(real, axis=1))[:100]  # the quarter of real points nearest the mean
    generated = real[central] + 0.01 * rng.standard_normal((100, 8))
    precision, recall = precision_recall(generated, real, k=3)
    assert precision == 1.0
    assert recall < 0.6


def test_class_coverage_finds_missing_classes():
    probs = np.zeros((10, 3))
    probs[:6, 0] = 1.0
    probs[6:, 1] = 0.6
    probs[6:, 2] = 0.4
    cov = class_coverage(probs, np.array([0, 1, 2] * 4), ["a", "b", "c"], confidence=0.9)
    assert cov["missing_classes"] == ["c"]
    assert cov["confident_share"] == pytest.approx(0.6)
    assert cov["per_class"]["a"] == {"samples": 0.6, "data": pytest.approx(1 / 3)}
    assert cov["class_share_tv"] == pytest.approx(0.5 * (abs(0.6 - 1 / 3) + abs(0.4 - 1 / 3) + 1 / 3))
