"""params.yaml -> typed config: defaults, profiles and one-line errors for bad values."""

from pathlib import Path

import pytest
import yaml

from ddpm.config import Config, config_from_dict, load_config
from ddpm.errors import ConfigError
from ddpm.unet import UNet, count_parameters
from pipeline.profile import render

ROOT = Path(__file__).resolve().parent.parent


def test_params_yaml_is_the_default_profile():
    assert load_config(ROOT / "params.yaml") == Config()
    assert (ROOT / "params.yaml").read_text() == render("default")


@pytest.mark.parametrize("name", ["default", "tiny", "cifar10-gpu", "mnist-cond", "mnist-uncond"])
def test_every_profile_validates(name):
    config_from_dict(yaml.safe_load(render(name)))


def test_cifar10_profile_is_the_papers_35_7m_model():
    cfg = config_from_dict(yaml.safe_load(render("cifar10-gpu")))
    model = UNet(cfg.model, cfg.data.image_size, cfg.data.channels)
    assert count_parameters(model) == pytest.approx(35.7e6, rel=0.005)
    assert (cfg.data.image_size, cfg.data.channels) == (32, 3)


@pytest.mark.parametrize("raw, match", [
    ({"train": {"lr": -1e-3}}, r"train\.lr = -0\.001 is out of range"),
    ({"diffusion": {"timesteps": 0}}, r"diffusion\.timesteps = 0 is out of range"),
    ({"data": {"image_size": 30}}, r"data\.image_size = 30 cannot be halved 2 times"),
    ({"data": {"source": "imagenet"}}, r"data\.source = 'imagenet' is not allowed: choose one of"),
    ({"train": {"stepz": 10}}, r"unknown parameter train\.stepz in params\.yaml: did you mean train\.steps\?"),
    ({"trian": {}}, r"unknown parameter trian"),
    ({"train": {"steps": "many"}}, r"train\.steps = 'many' must be an integer"),
    ({"model": {"attention_resolutions": [5]}}, r"not a U-Net resolution"),
    ({"model": {"norm_groups": 5}}, r"model\.norm_groups"),
    ({"sample": {"steps": 1001}}, r"sample\.steps = 1001 is more than diffusion\.timesteps = 1000: .*use at most 1000"),
    ({"sweep": {"steps": [10, 2000]}}, r"sweep\.steps = \[10, 2000\] is more than diffusion\.timesteps = 1000"),
    ({"train": {"keep_best": True, "eval_every": 0}}, r"train\.keep_best = True .* false when train\.eval_every is 0"),
    ({"train": {"ema_sigma_rel": 0.5}}, r"train\.ema_sigma_rel = 0\.5 is out of range: expected null .* or in \(0, 0\.28\)"),
    ({"train": {"lognormal_noise": [-1.2]}}, r"train\.lognormal_noise = \(-1\.2,\) .* \[P_mean, P_std\]"),
    ({"train": {"lognormal_noise": [-1.2, 0]}}, r"train\.lognormal_noise = \(-1\.2, 0\.0\) .* P_std > 0"),
    ({"runtime": {"device": "tpu"}}, r"runtime\.device = 'tpu' is out of range"),
    ({"runtime": {"cpu_isa": "avx512"}}, r"runtime\.cpu_isa = 'avx512' is not allowed: choose one of 'avx2', 'native'"),
    ({"sample": {"sampler": "euler"}}, r"sample\.sampler = 'euler' is not allowed: choose one of 'ddpm', 'ddim', 'dpmpp_2m'"),
    ({"train": {"loss": "hybrid"}}, r"train\.loss = hybrid trains the reverse variance, .*set model\.learn_sigma: true"),
    ({"train": {"loss": "kl"}}, r"train\.loss = 'kl' is not allowed: choose one of 'simple', 'hybrid', 'vlb'"),
    ({"train": {"importance_sampling": True, "lognormal_noise": [-1.2, 1.2]}},
     r"train\.importance_sampling = True .* false when train\.lognormal_noise is set"),
    ({"evaluate": {"nll_terms": 0}}, r"evaluate\.nll_terms = 0 is out of range: expected null \(every KL term\) or >= 1"),
    ({"evaluate": {"nll_images": -1}}, r"evaluate\.nll_images = -1 is out of range"),
])
def test_bad_values_name_the_key_and_the_fix(raw, match):
    with pytest.raises(ConfigError, match=match) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)


def test_yaml_scientific_notation_is_a_number(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-4\n")  # PyYAML reads this as a string
    assert load_config(path).train.lr == 1e-4


def test_missing_and_malformed_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
