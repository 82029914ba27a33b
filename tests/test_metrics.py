"""FID against an independent float64 computation; class coverage."""

import numpy as np
import pytest
from scipy import linalg

from ddpm.metrics import class_coverage, frechet_distance, gaussian_stats


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
