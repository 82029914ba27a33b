"""The noise-aware classifier of classifier guidance (ddpm.noisy_classifier, ddpm.noisy_classifier_io): it learns,
it is reproducible, its file round-trips and refuses another chain in one line, and its parameters are checked;
the sampling side (labels, one-line errors) and, slow, the stages' functions on the tiny profile."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from ddpm.config import config_from_dict
from ddpm.config.groups import NoisyClassifierConfig, SampleConfig
from ddpm.config.training import DiffusionConfig, ModelConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError, ConfigError
from ddpm.noisy_classifier import NoisyClassifier, accuracy_at, report_timesteps, train_noisy_classifier
from ddpm.noisy_classifier_io import load_noisy_classifier, save_noisy_classifier, write_not_trained
from ddpm.sampling import generate, sample_labels
from ddpm.schedules import make_betas
from ddpm.unet import UNet

SMALL = NoisyClassifierConfig(epochs=6, batch_size=32, lr=3e-3, base_channels=8, channel_mult=(1, 2),
                              attention_resolutions=(4,), norm_groups=4)
CHAIN = DiffusionConfig(timesteps=100)


def bars(n: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8x8 uint8 images of two classes: a bright bar across the top half (0) or the bottom half (1), with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, size=(n, 8, 8, 1)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 4 * y:4 * y + 4] = 230
    return images, labels


def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(make_betas(CHAIN), "v")


@pytest.fixture(scope="module")
def trained():
    images, labels = bars()
    return train_noisy_classifier(images, labels, SMALL, diffusion(), num_classes=2, seed=3, progress=False)


def test_training_lowers_the_loss_and_classifies_held_out_images_at_low_noise(trained):
    assert len(trained.epoch_losses) == SMALL.epochs
    # measured: 0.59 in the first epoch (chance: ln 2 = 0.69), 0.20 in the sixth (near t = T none can tell)
    assert trained.epoch_losses[-1] < 0.6 * trained.epoch_losses[0]
    images, labels = bars(64, seed=1)
    accuracy = accuracy_at(trained.model, diffusion(), images, labels, report_timesteps(100))
    assert list(accuracy) == [0, 25, 50, 75] and min(accuracy.values()) > 0.9  # measured: 1, 1, 1, 0.98
    torch.manual_seed(3)
    untrained = NoisyClassifier(SMALL, 8, 1, 2)
    assert max(accuracy_at(untrained, diffusion(), images, labels, [0, 50]).values()) < 0.6  # chance


def test_one_seed_gives_one_classifier():
    images, labels = bars(64)
    a, b, c = (train_noisy_classifier(images, labels, SMALL, diffusion(), num_classes=2, seed=seed, progress=False,
                                      max_steps=3) for seed in (5, 5, 6))
    for name, weight in a.model.state_dict().items():
        assert torch.equal(weight, b.model.state_dict()[name]), name
    assert a.epoch_losses == b.epoch_losses != c.epoch_losses


def test_the_file_round_trips_with_the_same_bytes(trained, tmp_path):
    save_noisy_classifier(tmp_path / "a.pt", trained.model, CHAIN, trained.epoch_losses)
    save_noisy_classifier(tmp_path / "b.pt", trained.model, CHAIN, trained.epoch_losses)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    loaded = load_noisy_classifier(tmp_path / "a.pt", CHAIN)
    assert isinstance(loaded, NoisyClassifier) and loaded.cfg == SMALL and loaded.num_classes == 2
    assert not any(p.requires_grad for p in loaded.parameters())  # guidance differentiates x, never the weights
    x, t = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 10, 50, 90, 99])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), trained.model(x, t), rtol=0, atol=0)
    # the prediction target is not the classifier's business: a v- or eps-model's chain is the same chain
    load_noisy_classifier(tmp_path / "a.pt", dataclasses.replace(CHAIN, prediction="eps"))


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_another_chain_a_missing_an_untrained_and_a_corrupt_file_are_one_line_naming_the_fix(trained, tmp_path):
    path = tmp_path / "noisy_classifier.pt"
    save_noisy_classifier(path, trained.model, CHAIN, trained.epoch_losses)
    for other, named in ((DiffusionConfig(timesteps=50), "timesteps 100 (the generator's: 50)"),
                         (dataclasses.replace(CHAIN, schedule="linear"), "schedule cosine (the generator's: linear)")):
        with pytest.raises(CheckpointError) as exc:
            load_noisy_classifier(path, other)
        assert named in one_line(exc) and "dvc repro noisy_classifier" in one_line(exc)
    with pytest.raises(CheckpointError, match="not found: re-run the noisy_classifier stage") as exc:
        load_noisy_classifier(tmp_path / "missing.pt", CHAIN)
    one_line(exc)
    write_not_trained(path, "nothing asked for it")
    assert path.stat().st_size < 200
    with pytest.raises(CheckpointError, match=r"was not trained \(nothing asked for it\): set sample.classifier_scale"):
        load_noisy_classifier(path, CHAIN)
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="cannot be read .*: delete it and re-run") as exc:
        load_noisy_classifier(path, CHAIN)
    one_line(exc)


BAD = [
    ({"sample": {"classifier_scale": -1.0}}, r"sample\.classifier_scale = -1\.0 is out of range: expected a finite"),
    ({"sample": {"classifier_scale": math.inf}}, r"sample\.classifier_scale = inf must be a finite number"),
    ({"sweep": {"classifier_scales": [1.0, -2.0]}}, r"sweep\.classifier_scales = \[1\.0, -2\.0\] is out of range"),
    ({"noisy_classifier": {"lr": 0.0}}, r"noisy_classifier\.lr = 0\.0 is out of range: expected in \(0, 1\]"),
    ({"noisy_classifier": {"epochs": 0}}, r"noisy_classifier\.epochs = 0 is out of range: expected >= 1"),
    ({"noisy_classifier": {"norm_groups": 5}}, r"noisy_classifier\.norm_groups = 5 is out of range: expected a div"),
    ({"noisy_classifier": {"attention_resolutions": [5]}, "sweep": {"classifier_scales": [1.0]}},
     r"noisy_classifier\.attention_resolutions contains 5, which is not a resolution .*: choose from \[7, 14, 28\]"),
    ({"noisy_classifier": {"channel_mult": [1, 2, 2, 2]}, "sample": {"classifier_scale": 1.0}},
     r"noisy_classifier\.channel_mult has 4 levels, which cannot halve data\.image_size = 28 3 times"),
    ({"noisy_classifier": {"widht": 3}}, r"unknown parameter noisy_classifier\.widht"),
    ({"model": {"num_classes": 0}, "sample": {"classes": [3]}},
     r"sample\.classes needs a class-conditional model, .* or set sample\.classifier_scale > 0"),
]


@pytest.mark.parametrize("params, message", BAD)
def test_bad_values_are_one_line_naming_the_key(params, message):
    with pytest.raises(ConfigError, match=message) as exc:
        config_from_dict(params)
    one_line(exc)


def test_an_unconditional_model_takes_classes_when_classifier_guided():
    cfg = config_from_dict({"model": {"num_classes": 0}, "sample": {"classes": [3, 8], "classifier_scale": 2.0}})
    np.testing.assert_array_equal(sample_labels(dataclasses.replace(cfg.sample, num_samples=5), 0, 10), [3, 8, 3, 8, 3])
    every = SampleConfig(num_samples=12, classifier_scale=1.0)  # no classes: every class of the classifier in turn
    np.testing.assert_array_equal(sample_labels(every, 0, 4), np.arange(12) % 4)
    assert sample_labels(SampleConfig(num_samples=3), 0, 4) is None  # unguided: unlabelled
    with pytest.raises(ConfigError, match="sample.classes contains 8, but the noisy classifier has 5 classes") as exc:
        sample_labels(cfg.sample, 0, 5)
    one_line(exc)
    with pytest.raises(ConfigError, match="noisy classifier of the model's 10 classes, but it has 4") as exc:
        sample_labels(every, 10, 4)
    one_line(exc)


def test_generate_guides_an_unconditional_unet_and_refuses_a_scale_without_a_classifier(trained):
    torch.manual_seed(0)
    unet = UNet(ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(), norm_groups=4,
                            num_classes=0), image_size=8, channels=1)
    cfg = SampleConfig(num_samples=6, sampler="ddim", steps=4, batch_size=4, autoguidance=0.0, classifier_scale=3.0,
                       classes=(1,))
    with pytest.raises(CheckpointError, match="needs the noisy classifier: run the noisy_classifier stage") as exc:
        generate(unet, diffusion(), cfg, progress=False)
    one_line(exc)
    plain = generate(unet, diffusion(), dataclasses.replace(cfg, classifier_scale=0.0, classes=None), progress=False)
    guided = generate(unet, diffusion(), cfg, classifier=trained.model, progress=False)
    assert guided.shape == plain.shape == (6, 8, 8, 1) and guided.dtype == np.uint8
    assert not np.array_equal(guided, plain)  # the same noise, steered


# ---------------------------------------------------------------------------- the stages' functions, tiny
@pytest.mark.slow
def test_the_tiny_project_trains_the_noisy_classifier_and_samples_and_sweeps_with_it(tmp_path, monkeypatch):
    """The tiny profile's unconditional model, classifier-guided at s = 2: the stages' own functions in a copy
    of the project (not DVC), from prepare to a sample and a sweep with s rows; every output finite."""
    import json

    import yaml

    from ddpm.config import load_config
    from pipeline import paths
    from pipeline.classifier import classifier
    from pipeline.noisy_classifier import noisy_classifier
    from pipeline.prepare import prepare
    from pipeline.reference import reference
    from pipeline.sample import sample
    from pipeline.sweep import sweep
    from pipeline.train import train_stage
    from tests.helpers import copy_project, use_profile

    project = copy_project(tmp_path / "p")
    use_profile(project, "tiny")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sample"].update(classifier_scale=2.0, classes=[3, 7])
    params["sweep"].update(samplers=["ddim"], steps=[4], ddpm=False, classifier_scales=[0.0, 2.0])
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(project)
    cfg = load_config(paths.PARAMS)
    for stage in (prepare, noisy_classifier, classifier, reference, train_stage):
        stage(cfg)
    metrics = json.loads(paths.NOISY_CLASSIFIER_METRICS.read_text())["noisy_classifier"]
    assert metrics["trained"] and metrics["classes"] == 10 and set(metrics["accuracy"]) == {"t_0", "t_12", "t_25",
                                                                                            "t_37"}
    assert all(0 <= a <= 1 for a in metrics["accuracy"].values()) and math.isfinite(metrics["final_loss"])
    sample(cfg)
    with np.load(paths.SAMPLES) as z:
        assert z["images"].shape == (24, 28, 28, 1) and z["labels"].tolist() == [3, 7] * 12
    assert json.loads(paths.SAMPLE_METRICS.read_text())["sample"]["classifier_scale"] == 2.0
    sweep(cfg)
    rows = json.loads(paths.SWEEP_METRICS.read_text())["classifier_guidance"]
    assert list(rows) == ["s_0", "s_2"]
    for s, row in zip((0.0, 2.0), rows.values()):
        assert row["classifier_scale"] == s and row["n_samples"] == 12 and 0 <= row["accuracy"] <= 1
        assert math.isfinite(row["fid"])
    table = paths.GUIDANCE_TABLE.read_text().splitlines()
    assert table[0].startswith("guidance,classifier_scale,fid") and len(table) == 3
