"""evaluate.train_statistics: FID and sFID of the samples against the training set's Gaussian statistics (the
papers' protocol), beside the held-out metrics; the statistics survive the reference file."""

import numpy as np
import scipy.linalg

from ddpm.config.groups import EvaluateConfig
from ddpm.evaluation.metrics import gaussian_stats
from ddpm.evaluation.scores import Reference, evaluate_space


def frechet_by_hand(a: np.ndarray, b_mu: np.ndarray, b_sigma: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with scipy's matrix square root."""
    mu, sigma = a.mean(0), np.cov(a, rowvar=False)
    root = scipy.linalg.sqrtm(sigma @ b_sigma).real
    return float(((mu - b_mu) ** 2).sum() + np.trace(sigma + b_sigma - 2 * root))


def test_fid_against_the_training_set_is_the_frechet_distance_to_its_statistics(tmp_path):
    rng = np.random.default_rng(0)
    feats = lambda n, shift=0.0: {"2048": rng.normal(shift, 1.0, (n, 6)), "spatial": rng.normal(shift, 1.0, (n, 4))}  # noqa: E731
    train = feats(400, 0.3)
    ref = Reference("inception", "w", feats(60), feats(60),
                    {k: gaussian_stats(v) for k, v in train.items()})
    ref.save(tmp_path / "r.npz")
    loaded = Reference.load(tmp_path / "r.npz")
    assert loaded.train["2048"].n == 400
    np.testing.assert_array_equal(loaded.train["spatial"].sigma, ref.train["spatial"].sigma)  # float64 kept
    samples = feats(50)
    m = evaluate_space(samples, loaded, "2048",
                       EvaluateConfig(kid_subset_size=20, kid_subsets=5), seed=0)
    assert m["train"]["n_samples"] == 50 and m["train"]["n_reference"] == 400
    want = frechet_by_hand(samples["2048"], train["2048"].mean(0), np.cov(train["2048"], rowvar=False))
    assert abs(m["train"]["fid"] - want) < 1e-6 * max(1.0, want)
    want_s = frechet_by_hand(samples["spatial"], train["spatial"].mean(0), np.cov(train["spatial"], rowvar=False))
    assert abs(m["train"]["sfid"] - want_s) < 1e-6 * max(1.0, want_s)
    assert m["train"]["fid"] != m["fid"]  # the held-out number stays beside it


def test_without_training_statistics_there_is_no_train_entry():
    rng = np.random.default_rng(1)
    feats = lambda n: {"features": rng.normal(size=(n, 5)), "logits": rng.normal(size=(n, 3))}  # noqa: E731
    m = evaluate_space(feats(30), Reference("domain", "w", feats(30), feats(30)), "features",
                       EvaluateConfig(kid_subset_size=10, kid_subsets=3))
    assert "train" not in m
