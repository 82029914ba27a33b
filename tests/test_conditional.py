"""Class-conditional generation with classifier-free guidance (issue 16): label dropout, the guided
prediction, sampling with labels, unconditional models unchanged, the errors, the served model."""

import dataclasses
import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from ddpm.config import Config, config_from_checkpoint, config_from_dict
from ddpm.config.groups import SampleConfig
from ddpm.config.training import DiffusionConfig, ModelConfig
from ddpm.data import check_num_classes
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.guidance import drop_labels, guide, guided
from ddpm.samplers import PerSampleGenerators, sample
from ddpm.sampling import generate, sample_labels
from ddpm.train import train
from ddpm.unet import UNet, count_parameters

SMALL = ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(), norm_groups=4, num_classes=10)


@pytest.fixture(scope="module")
def model():
    """A conditional U-Net with non-zero weights: its output depends on x_t, t and the label."""
    torch.manual_seed(0)
    net = UNet(SMALL, image_size=8, channels=1)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion.from_config(Config(diffusion=DiffusionConfig(timesteps=10)))


# ---------------------------------------------------------------------------- training: the null label
def test_labels_are_dropped_to_the_null_class_at_the_configured_rate():
    n, p, null = 200_000, 0.1, 10
    labels = torch.arange(n) % 10
    dropped = drop_labels(labels, torch.rand(n, generator=torch.Generator().manual_seed(0)), p, null)
    share = (dropped == null).float().mean().item()
    assert share == pytest.approx(p, abs=5 * (p * (1 - p) / n) ** 0.5)  # 5 binomial standard deviations
    kept = dropped != null
    assert torch.equal(dropped[kept], labels[kept])  # the rest keep their own label
    assert torch.equal(drop_labels(labels, torch.rand(n), 0.0, null), labels)


def test_training_feeds_the_network_labels_dropped_at_train_cond_drop(monkeypatch):
    seen = []
    forward = UNet.forward

    def spy(self, x, t, y=None):
        seen.append(y.clone())
        return forward(self, x, t, y)

    monkeypatch.setattr(UNet, "forward", spy)
    cfg = config_from_dict({"model": {"base_channels": 8, "channel_mult": [1, 2], "attention_resolutions": [],
                                      "norm_groups": 4, "num_classes": 3},
                            "diffusion": {"timesteps": 50}, "sample": {"num_samples": 1000, "steps": 4},
                            "train": {"steps": 2, "batch_size": 200, "eval_every": 0, "warmup_steps": 1,
                                      "cond_drop": 0.25}})
    images = np.zeros((30, 8, 8, 1), np.uint8)
    result = train(cfg, images, labels=np.arange(30) % 3, progress=False)
    y = torch.cat(seen)
    assert len(y) == 2 * 200 and set(y.tolist()) == {0, 1, 2, 3}  # 3 is the null class
    assert (y == 3).float().mean().item() == pytest.approx(0.25, abs=5 * (0.25 * 0.75 / len(y)) ** 0.5)
    assert result.checkpoint["config"]["model"]["num_classes"] == 3
    assert result.checkpoint["ema"]["module.class_emb.weight"].shape == (4, 32)  # 3 classes + null, 4 * base


@pytest.mark.parametrize("labels, match", [
    (None, r"model\.num_classes = 10 needs labelled training images .* or set model\.num_classes: 0"),
    (np.arange(20) % 5, r"model\.num_classes = 10 but the training labels run from 0 to 4: set model\.num_classes: 5"),
    (np.arange(20) % 12, r"labels run from 0 to 11: set model\.num_classes: 12"),
])
def test_num_classes_must_match_the_training_labels(labels, match):
    with pytest.raises(ConfigError, match=match) as info:
        check_num_classes(10, labels)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- the guided prediction
def stub(x, t, y):
    """Predicts the label where there is one and 2 for the null class (10): outputs known by hand."""
    value = torch.where(y == 10, 2.0, y.float())
    return value[:, None, None, None].expand_as(x).clone()


def test_guidance_is_one_plus_w_cond_minus_w_uncond_in_one_batched_call():
    calls = []

    def counted(x, t, y):
        calls.append(len(y))
        return stub(x, t, y)

    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([4, 4])
    out = guided(counted, torch.tensor([3, 5]), 1.5, null_class=10)(x, t)
    # (1 + 1.5) * 3 - 1.5 * 2 = 4.5; (1 + 1.5) * 5 - 1.5 * 2 = 9.5
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([4.5, 9.5]))
    assert calls == [4]  # conditional and null rows: one forward of 2B
    torch.testing.assert_close(guide(torch.tensor(3.0), torch.tensor(2.0), 1.5), torch.tensor(4.5))


def test_the_samplers_use_the_guided_prediction(diffusion):
    """p_mean_variance with the guided model is p_mean_variance with the hand-guided eps."""
    x, t = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([6, 6])
    by_hand = torch.tensor([4.5, 9.5])[:, None, None, None].expand_as(x)
    ours = diffusion.p_mean_variance(guided(stub, torch.tensor([3, 5]), 1.5, 10)(x, t), x, t, clip_denoised=False)
    hand = diffusion.p_mean_variance(by_hand, x, t, clip_denoised=False)
    for a, b in zip(ours, hand):
        torch.testing.assert_close(a, b)


def test_guiding_v_is_guiding_eps():
    """(1 + w) - w = 1 and eps is affine in v at a fixed x_t: eps of the guided v is the guided eps."""
    diffusion = GaussianDiffusion.from_config(Config(diffusion=DiffusionConfig(timesteps=10, prediction="v")))
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64), torch.tensor([2, 5, 9])
    v_cond, v_uncond = torch.randn(2, 3, 1, 4, 4, generator=gen, dtype=torch.float64)
    eps = lambda v: diffusion.predict_x0_eps(v, x, t, clip_denoised=False)[1]  # noqa: E731
    torch.testing.assert_close(eps(guide(v_cond, v_uncond, 2.0)), guide(eps(v_cond), eps(v_uncond), 2.0))


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 1.0), ("dpmpp_2m", 0.0)])
def test_guidance_zero_is_conditional_sampling_byte_for_byte(model, diffusion, sampler, eta):
    cfg = SampleConfig(num_samples=6, sampler=sampler, steps=4, eta=eta, batch_size=6, seed=3, classes=(7, 2),
                       autoguidance=0.0)
    images = generate(model, diffusion, cfg, progress=False)
    labels = torch.tensor([7, 2] * 3)
    x = sample(lambda x_t, t: model(x_t, t, labels), diffusion, (6, 1, 8, 8), sampler=sampler, steps=4, eta=eta,
               generator=PerSampleGenerators(3, range(6)))
    expected = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert images.tobytes() == expected.tobytes()
    guided_images = generate(model, diffusion, SampleConfig(**{**cfg.__dict__, "guidance": 3.0}), progress=False)
    assert not np.array_equal(guided_images, images)


def test_labels_cycle_through_the_configured_classes():
    np.testing.assert_array_equal(sample_labels(SampleConfig(num_samples=12), 5), np.arange(12) % 5)
    np.testing.assert_array_equal(sample_labels(SampleConfig(num_samples=5, classes=(3, 7)), 10), [3, 7, 3, 7, 3])
    assert sample_labels(SampleConfig(num_samples=5), 0) is None


def test_a_label_changes_the_sample_and_none_is_the_null_class(model):
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 3])
    assert not torch.allclose(model(x, t, torch.tensor([1, 1])), model(x, t, torch.tensor([2, 2])))
    torch.testing.assert_close(model(x, t), model(x, t, torch.tensor([10, 10])))


# ---------------------------------------------------------------------------- unconditional models
def test_an_unconditional_model_is_the_model_from_before_classes():
    """Same parameters, keys and initial weights (seed 0) as before model.num_classes existed."""
    cfg = config_from_dict({"model": {"num_classes": 0}})
    torch.manual_seed(0)
    net = UNet(cfg.model, 28, 1)
    digest = hashlib.sha256()
    for key, value in net.state_dict().items():
        digest.update(key.encode())
        digest.update(value.numpy().tobytes())
    assert count_parameters(net) == 686_769 and len(net.state_dict()) == 168
    assert digest.hexdigest() == "63482e8aeb2c0bf3f9bc4908c74aa7910567e670383aa5042f080c0bfee1dc0e"
    record = cfg.training_dict()  # what the checkpoint stores: unchanged bytes
    assert "num_classes" not in record["model"] and "cond_drop" not in record["train"]
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.zeros(1, 1, 28, 28), torch.tensor([0]), torch.tensor([3]))


def test_a_checkpoint_without_classes_reads_as_unconditional_whatever_the_default():
    unconditional = config_from_dict({"model": {"num_classes": 0}})
    assert Config().model.num_classes == 10  # the default is conditional, so a missing key must not mean 10
    assert config_from_checkpoint(unconditional.training_dict()).model == unconditional.model
    assert config_from_checkpoint(Config().training_dict()).model == Config().model


def test_a_conditional_model_adds_only_the_class_embedding():
    torch.manual_seed(0)
    plain = UNet(ModelConfig(num_classes=0), 28, 1).state_dict()
    torch.manual_seed(0)
    conditional = UNet(ModelConfig(num_classes=10), 28, 1).state_dict()
    assert set(conditional) - set(plain) == {"class_emb.weight"}
    assert conditional["class_emb.weight"].shape == (11, 64)  # 10 classes + null, time-embedding width
    assert all(torch.equal(plain[k], conditional[k]) for k in plain)  # created last: the same initial weights


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("raw, match", [
    ({"model": {"num_classes": 0}, "sample": {"classes": [7]}},
     r"sample\.classes needs a class-conditional model, .* \(model\.num_classes = 0\)"),
    ({"model": {"num_classes": 0}, "sample": {"guidance": 2.0}}, r"sample\.guidance needs a class-conditional model"),
    ({"model": {"num_classes": 10}, "sample": {"classes": [3, 10]}},
     r"sample\.classes contains 10, .* use labels 0 to 9"),
    ({"model": {"num_classes": 10}, "sample": {"guidance": 1.0}, "train": {"cond_drop": 0.0}},
     r"train\.cond_drop = 0 never trains: set train\.cond_drop: 0\.1"),
    ({"model": {"num_classes": -1}}, r"model\.num_classes = -1 is out of range"),
    ({"train": {"cond_drop": 1.0}}, r"train\.cond_drop = 1\.0 is out of range: expected in \[0, 1\)"),
    ({"sample": {"guidance": -1.0}}, r"sample\.guidance = -1\.0 is out of range"),
    ({"model": {"num_classes": 10}, "sample": {"classes": []}}, r"sample\.classes = \[\] is out of range"),
    ({"model": {"num_classes": 10}, "train": {"cond_drop": 0.0}, "sweep": {"guidance": [0, 1]}},
     r"sweep\.guidance = \[0\.0, 1\.0\] guides .* set train\.cond_drop: 0\.1, "
     r"or sweep\.guidance: \[\]"),
    ({"sweep": {"guidance": [0, -1]}}, r"sweep\.guidance = \[0\.0, -1\.0\] is out of range: expected .* >= 0"),
])
def test_bad_conditioning_is_one_line_naming_the_key(raw, match):
    with pytest.raises(ConfigError, match=match) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)


def test_an_unconditional_model_refuses_labels_when_sampling(diffusion):
    torch.manual_seed(0)
    unconditional = UNet(ModelConfig(**{**SMALL.__dict__, "num_classes": 0}), 8, 1)
    with pytest.raises(ConfigError, match=r"sample\.classes needs a class-conditional model"):
        generate(unconditional, diffusion, SampleConfig(num_samples=2, classes=(1,)), progress=False)


# ---------------------------------------------------------------------------- the served generator
def served(model, diffusion):
    from ddpm.tracking.generator_model import DDPMGenerator

    generator = DDPMGenerator()  # what load_context builds from the checkpoint and the registered config
    generator.ema, generator.guide, generator.diffusion, generator.device = model, None, diffusion, "cpu"
    generator.defaults = SampleConfig(steps=4, seed=5, autoguidance=0.0)
    return generator


def test_the_served_model_honours_class_and_guidance(model, diffusion):
    generator = served(model, diffusion)
    rows = pd.DataFrame([{"num_samples": 3, "class": 7, "guidance": 1.0}, {"num_samples": 2, "class": 3}])
    images = generator.predict(None, rows)
    assert images.shape == (5, 8, 8, 1)
    seven = generate(model, diffusion, SampleConfig(num_samples=3, batch_size=3, steps=4, seed=5, classes=(7,),
                                                    guidance=1.0, autoguidance=0.0), progress=False)
    three = generate(model, diffusion, SampleConfig(num_samples=2, batch_size=2, steps=4, seed=5, classes=(3,),
                                                    autoguidance=0.0), progress=False)
    np.testing.assert_array_equal(images, np.concatenate([seven, three]))
    other = generator.predict(None, pd.DataFrame([{"num_samples": 3, "class": 2, "guidance": 1.0}]))
    assert not np.array_equal(other, seven)


def test_served_requests_check_class_against_the_model():
    from mlflow.exceptions import MlflowException

    from ddpm.tracking.generator_model import request_config

    defaults = SampleConfig()
    assert request_config({"num_samples": 2, "class": 7.0}, defaults, 1000, num_classes=10).classes == (7,)
    assert request_config({"num_samples": 2, "class": float("nan")}, defaults, 1000, num_classes=10).classes is None
    for row, classes, match in [
        ({"num_samples": 2, "class": 7}, 0, r"class = 7 is not allowed: this model is unconditional"),
        ({"num_samples": 2, "guidance": 2.0}, 0, r"guidance = 2\.0 is not allowed: this model is unconditional"),
        ({"num_samples": 2, "class": 10}, 10, r"class = 10 is not one of the model's classes: .* 0 to 9"),
        ({"num_samples": 2, "class": "seven"}, 10, r"class = 'seven' is not one of the model's classes"),
        ({"num_samples": 2, "class": 1, "guidance": -2}, 10, r"guidance = -2 is out of range: send a number from 0"),
    ]:
        with pytest.raises(MlflowException, match=match) as info:
            request_config(row, defaults, 1000, num_classes=classes)
        assert info.value.get_http_status_code() == 400


# ---------------------------------------------------------------------------- evaluation and the profile
def test_conditional_accuracy_by_hand():
    from ddpm.evaluation.scores import conditional_accuracy

    names = ["zero", "one", "two"]
    # samples asked for 0, 0, 1, 1, 2, 2; the classifier says 0, 1, 1, 1, 2, 0
    logits = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    real_logits, real_labels = np.eye(3)[[0, 1, 2, 2]], np.array([0, 1, 2, 1])
    out = conditional_accuracy(logits, np.array([0, 0, 1, 1, 2, 2]), names, real_logits, real_labels)
    assert out["accuracy"] == pytest.approx(4 / 6) and out["accuracy_real"] == pytest.approx(3 / 4)
    assert out["per_class"] == {"zero": {"samples": 0.5, "real": 1.0}, "one": {"samples": 1.0, "real": 0.5},
                                "two": {"samples": 0.5, "real": 1.0}}
    only_ones = conditional_accuracy(logits[2:4], np.array([1, 1]), names)
    assert only_ones["per_class"]["zero"] == {"samples": None} and only_ones["accuracy"] == 1.0
    from ddpm.errors import DataError
    with pytest.raises(DataError, match="do not fit 6 samples of 3 classes"):
        conditional_accuracy(logits, np.array([0, 0, 1, 1, 2, 3]), names)


def test_fid_per_class_compares_each_class_with_its_own_held_out_images():
    from ddpm.evaluation.metrics import frechet_distance, gaussian_stats
    from ddpm.evaluation.scores import fid_per_class

    rng = np.random.default_rng(0)
    labels, test_labels = np.repeat([0, 1, 2], [60, 60, 10]), np.repeat([0, 1, 2], [70, 55, 70])
    feats = rng.normal(size=(len(labels), 4)) + labels[:, None]  # class c around c
    test = rng.normal(size=(len(test_labels), 4)) + test_labels[:, None]
    fids = fid_per_class(feats, labels, test, test_labels, ["a", "b", "c"], min_n=50)
    for c, name in enumerate("ab"):
        expected = frechet_distance(gaussian_stats(feats[labels == c]), gaussian_stats(test[test_labels == c]))
        assert fids[name] == pytest.approx(expected, rel=1e-12) and fids[name] < 1  # same class: close
    assert fids["c"] is None  # 10 samples: too few
    swapped = fid_per_class(feats, 1 - np.clip(labels, 0, 1), test, test_labels, ["a", "b", "c"], min_n=50)
    assert swapped["a"] > 3 and swapped["b"] > 3  # the samples of the other class: one unit apart in 4 dimensions
    from ddpm.errors import DataError
    with pytest.raises(DataError, match="re-run the reference and sample stages"):
        fid_per_class(feats, labels, test[:-1], test_labels, ["a", "b", "c"])


def profile(name: str) -> Config:
    import yaml

    from pipeline.profile import render

    return config_from_dict(yaml.safe_load(render(name)))


def test_the_mnist_cond_profile_is_the_default_with_classifier_free_guidance_for_autoguidance():
    cfg = profile("mnist-cond")
    assert cfg.data == Config().data and cfg.model == Config().model  # the default's digits, classes and U-Net
    assert cfg.sample.guidance > 0 and not cfg.sample.autoguidance and cfg.train.autoguide_at is None
    assert cfg.train.steps < Config().train.steps  # the guided step's second call is paid for in training


def test_the_mnist_uncond_profile_is_the_default_without_classes():
    cfg = profile("mnist-uncond")
    assert cfg.model == dataclasses.replace(Config().model, num_classes=0)
    assert cfg.data == Config().data and cfg.train == Config().train and cfg.sample.autoguidance == 2.0


# ---------------------------------------------------------------------------- the DAG, conditional
@pytest.mark.slow
def test_a_tiny_conditional_dag_end_to_end(tmp_path):
    """The tiny profile with ten classes through `dvc repro`: labelled samples, conditional accuracy per class,
    the guidance sweep as metrics, DVC plot and report table, every number in the report from the JSON."""
    import json
    import sys

    import yaml

    from tests.helpers import copy_project, run, use_profile

    project = copy_project(tmp_path / "p")
    use_profile(project, "tiny")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"]["num_classes"], params["train"]["cond_drop"] = 10, 0.1
    params["sample"]["guidance"], params["sweep"]["guidance"] = 1.0, [2.0, 0.0]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny, conditional"]):
        run(cmd, cwd=project)
    run([sys.executable, "-m", "dvc", "repro"], cwd=project)

    with np.load(project / "samples/samples.npz") as z:
        assert z["images"].shape[0] == 24 and z["labels"].tolist() == [i % 10 for i in range(24)]
    conditional = json.loads((project / "reports/metrics/evaluate.json").read_text())["conditional"]
    assert conditional["n_samples"] == 24 and 0 <= conditional["accuracy"] <= 1
    assert sorted(conditional["per_class"]) == [str(c) for c in range(10)]
    assert all(0 <= v["real"] <= 1 for v in conditional["per_class"].values())
    assert conditional["fid_min_n"] == 50 and all(v["fid"] is None for v in conditional["per_class"].values())
    guided = json.loads((project / "reports/metrics/sweep.json").read_text())["guidance"]
    assert list(guided) == ["w_0", "w_2"]  # sorted by w
    for w, row in zip((0.0, 2.0), guided.values()):
        assert row["guidance"] == w and row["n_samples"] == 12 and 0 <= row["accuracy"] <= 1
        assert row["fid"] > 0 and row["space"] == "domain"
    table = (project / "reports/plots/guidance_sweep.csv").read_text().splitlines()
    assert table[0] == "guidance,classifier_scale,fid,fid_floor,accuracy,space,n_samples,n_floor" and len(table) == 3
    report = (project / "reports/report.md").read_text()
    assert "## Class-conditional samples" in report
    assert (f"Conditional accuracy: {conditional['accuracy']:.4g} of 24 samples (classifier-free guidance w = 1, "
            "autoguidance w = 1) are classified") in report
    for row in guided.values():
        assert (f"| {row['guidance']:g} | {row['fid']:.4g} | {row['fid_floor']:.4g} | domain | "
                f"{row['accuracy']:.4g} |") in report
    plots = json.loads(run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=project).stdout)["data"]
    for name in ("reports/plots/guidance_sweep.csv", "conditional_accuracy"):  # FID, then accuracy, against w
        [plot] = plots[name]
        assert [float(r["guidance"]) for r in plot["content"]["data"]["values"]] == [0.0, 2.0]


def test_guidance_of_a_learned_variance_network_guides_the_prediction_and_keeps_its_variance():
    cond, uncond = torch.tensor([[[[2.0]], [[0.3]]]]), torch.tensor([[[[1.0]], [[-0.9]]]])  # (prediction, v)
    out = guide(cond, uncond, 1.5, learned_variance=True)
    torch.testing.assert_close(out, torch.tensor([[[[3.5]], [[0.3]]]]))
