"""Careless and hostile input (issue 30): each ends in one line naming the key, the value and the fix, before any
stage writes, where it used to end in a traceback, a silent default or a misleading message."""

import math
import sys

import numpy as np
import pytest
from PIL import Image

from ddpm.config import Config, config_from_dict, load_config
from ddpm.config.training import DataConfig
from ddpm.data import load_splits
from ddpm.errors import ConfigError, DataError
from pipeline import stage
from pipeline.profile import render
from tests.helpers import ROOT, copy_project, run, use_profile

BIG = 2**63


@pytest.mark.parametrize("raw, match", [
    ({"model": {"norm_groups": 0}}, r"model\.norm_groups = 0 is out of range: expected >= 1"),
    ({"noisy_classifier": {"norm_groups": 0}}, r"noisy_classifier\.norm_groups = 0 is out of range"),
    ({"seed": -1}, r"seed = -1 is out of range: expected an integer in \[0, 2\^63\)"),
    ({"seed": BIG}, r"seed = 9223372036854775808 is too large: expected an integer below 2\^63"),
    ({"sample": {"seed": -5}}, r"sample\.seed = -5 is out of range"),
    ({"sweep": {"seed": 2**64}}, r"sweep\.seed = 18446744073709551616 is .*2\^63"),
    ({"train": {"steps": 10**30}}, r"train\.steps = 10{30} is too large: expected an integer below 2\^63"),
    ({"train": {"lognormal_noise": [math.nan, 1.2]}}, r"train\.lognormal_noise = nan must be a finite number"),
    ({"train": {"lognormal_noise": [-1.2, math.inf]}}, r"train\.lognormal_noise = inf must be a finite number"),
    ({"runtime": {"device": "mps"}}, r"runtime\.device = 'mps' is out of range: expected \"auto\", \"cpu\", \"cuda\""),
    ({"runtime": {"device": "cuda:abc"}}, r"runtime\.device = 'cuda:abc' is out of range"),
    ({"runtime": {"device": "cuda:-1"}}, r"runtime\.device = 'cuda:-1' is out of range"),
    ({"sample": {"guidance": math.inf}}, r"sample\.guidance = inf must be a finite number"),
    ({"sample": {"guidance": "1e999"}}, r"sample\.guidance = inf must be a finite number"),  # YAML 1.1: a string
    ({"sample": {"guidance": 1e308}}, r"sample\.guidance = 1e\+308 is out of range: expected .* <= 1000"),
    ({"sample": {"autoguidance": math.nan}}, r"sample\.autoguidance = nan must be a finite number"),
    ({"sweep": {"guidance": [1.0, 1e9]}}, r"sweep\.guidance = \[1\.0, 1000000000\.0\] is out of range: .*<= 1000"),
    ({"sample": {"classifier_scale": 5000.0}}, r"sample\.classifier_scale = 5000\.0 is out of range: .*<= 1000"),
    ({"train": {"lr": math.nan}}, r"train\.lr = nan must be a finite number"),
    ({"train": {"grad_clip": math.inf}}, r"train\.grad_clip = inf must be a finite number"),
    ({"diffusion": {"beta_end": math.nan}}, r"diffusion\.beta_end = nan must be a finite number"),
    ({"diffusion": {"cosine_s": 1e30}}, r"diffusion\.cosine_s = 1e\+30 is out of range: expected in \(0, 1\)"),
    ({"train": {"lr": 10.0}}, r"train\.lr = 10\.0 is out of range: expected <= 1"),
    ({"classifier": {"lr": 5.0}}, r"classifier\.lr = 5\.0 is out of range: expected in \(0, 1\]"),
    ({"train": {"weight_decay": 1e30}}, r"train\.weight_decay = 1e\+30 is out of range: .*below 1 / train\.lr = 250"),
    ({"noisy_classifier": {"weight_decay": 400.0}}, r"noisy_classifier\.weight_decay = 400\.0 is out of range"),
    ({"diffusion": {"timesteps": 10**9}}, r"diffusion\.timesteps = 1000000000 is out of range: .*<= 100000"),
    ({"sample": {"grid_size": 5000}}, r"sample\.grid_size = 5000 is more than sample\.num_samples = 1000"),
    ({"data": {"root": "data/raw\nforged: line"}}, r"data\.root = 'data/raw\\nforged: line' holds a control char"),
    ({"tracking": {"experiment": "x" * 600}}, r"tracking\.experiment = 'x{20}'\.\.\. is 600 characters long"),
])
def test_bad_values_are_one_line_naming_key_value_and_fix(raw, match):
    with pytest.raises(ConfigError, match=match) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, match", [
    ("", r"params\.yaml is empty: .*python -m pipeline\.profile default"),
    ("# only a comment\n", r"params\.yaml is empty"),
    ("{}\n", r"params\.yaml is empty"),
    ("train:\n  steps: 5\nsample:\n  steps: 3\ntrain:\n  lr: 0.1\n",
     r"params\.yaml sets train twice \(lines 1 and 5\): YAML keeps only the last; merge them into one"),
    ("train:\n  steps: 5\n  steps: 6\n", r"params\.yaml sets train\.steps twice \(lines 2 and 3\)"),
])
def test_empty_and_duplicated_params_files_are_refused(tmp_path, text, match):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def write_folder(root, counts, size=8):
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((size, size), 20 * i, np.uint8)).save(root / name / f"{i}.png")


def folder(root):
    return DataConfig(source="folder", root=str(root), image_size=8, channels=1)


def test_an_empty_class_folder_is_refused_not_a_shift_of_every_later_label(tmp_path):
    write_folder(tmp_path, {"a": 5, "b": 0, "c": 5})
    with pytest.raises(DataError, match=r"class folder .*/b holds no images: add images to it or remove it"):
        load_splits(folder(tmp_path), seed=0)


@pytest.mark.parametrize("name", ["<img src=x onerror=alert(1)>", "tab\there", "rtl\u202eoverride", "a'quote",
                                  "-dash-first", "x" * 65])
def test_class_names_that_mlflow_or_html_would_refuse_are_refused_at_prepare(tmp_path, name):
    write_folder(tmp_path, {"ok": 5, name: 5})
    with pytest.raises(DataError, match=r"class name .* \(a folder in .*\) cannot be part of an MLflow metric name: "
                                        r"rename the folder"):
        load_splits(folder(tmp_path), seed=0)


@pytest.mark.parametrize("limit", [30, 50])  # 64 pixels: over twice the limit is PIL's error, over once its warning
def test_a_decompression_bomb_is_one_line_naming_the_file(tmp_path, monkeypatch, limit):
    write_folder(tmp_path, {"a": 5, "b": 5})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError, match=r"a/0\.png is a decompression bomb \(more pixels than PIL's limit of "
                                        rf"{limit}\): remove it or shrink it to data\.image_size") as info:
        load_splits(folder(tmp_path), seed=0)
    assert "\n" not in str(info.value)


GIB = 2**30


@pytest.mark.parametrize("raw, match", [
    ({"train": {"batch_size": 10**7}}, (r"train\.batch_size = 10000000 needs at least .* GiB .* more than the "
                                        r"8\.0 GiB of .*: lower train\.batch_size to at most \d+")),
    ({"train": {"eval_samples": 10**8}}, r"train\.eval_samples = 100000000 needs at least .*lower train\.eval_samples"),
    ({"sample": {"batch_size": 10**8}}, r"sample\.batch_size = 100000000 needs at least"),
    ({"sample": {"num_samples": 10**10, "batch_size": 100}}, r"sample\.num_samples = 10000000000 needs at least"),
    ({"evaluate": {"batch_size": 10**5}}, r"evaluate\.batch_size = 100000 needs at least"),
    ({"model": {"base_channels": 8192}}, r"model\.base_channels = 8192 needs at least .*weights"),
    ({"model": {"num_classes": 10**10}}, r"model\.num_classes = 10000000000 needs at least .*class embedding"),
    ({"classifier": {"width": 10**5}}, r"classifier\.width = 100000 needs at least .*: lower classifier\.width$"),
    ({"noisy_classifier": {"base_channels": 10**5}, "sample": {"classifier_scale": 1.0}},
     r"noisy_classifier\.base_channels = 100000 needs at least"),
])
def test_a_batch_far_too_large_for_memory_is_refused_before_allocating(raw, match):
    from ddpm.config.memory import check_memory

    with pytest.raises(ConfigError, match=match) as info:
        check_memory(config_from_dict(raw), device_bytes=8 * GIB, host_bytes=8 * GIB, device_name="CPU memory")
    assert "\n" not in str(info.value)
    check_memory(Config(), device_bytes=1 * GIB, host_bytes=1 * GIB, device_name="CPU memory")  # the default fits


@pytest.mark.parametrize("noise, match", [
    ([40.0, 1.2], (r"train\.lognormal_noise = \[40\.0, 1\.2\] draws 100% of training steps at the chain's ends "
                   r"\(t = 0 or T - 1; its ln sigma runs from -\d\.\d to \d\.\d\): choose P_mean within that range")),
    ([-1.2, 1e6], r"train\.lognormal_noise = \[-1\.2, 1000000\.0\] draws 100% "),
    ([-30.0, 1.0], r"draws 100% of training steps at the chain's ends"),
])
def test_lognormal_noise_far_outside_the_chain_is_refused(noise, match):
    from ddpm.runtime import check_lognormal_noise

    with pytest.raises(ConfigError, match=match):
        check_lognormal_noise(config_from_dict({"train": {"lognormal_noise": noise}}))
    for fine in ([-1.2, 1.2], [2.0, 1.0], [-3.0, 2.0]):  # EDM's, and ones that lean to either end
        check_lognormal_noise(config_from_dict({"train": {"lognormal_noise": fine}}))


def test_a_cuda_ordinal_the_machine_lacks_is_one_line(monkeypatch):
    import torch

    from ddpm.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"runtime\.device = 'cuda:2' but this machine has 2 CUDA devices "
                                          r"\(cuda:0 to cuda:1\): use one of them, or \"auto\""):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_a_batch_is_weighed_against_the_gpu_it_runs_on(monkeypatch):
    import types

    import torch

    from ddpm.runtime import check_before_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(total_memory=GIB))
    check_before_run(config_from_dict({"runtime": {"device": "cuda"}}))
    with pytest.raises(ConfigError, match=r"sample\.batch_size = 100000 needs at least .* more than the 1\.0 GiB "
                                          r"of GPU cuda:0: lower sample\.batch_size to at most \d+"):
        check_before_run(config_from_dict({"runtime": {"device": "cuda:0"}, "sample": {"batch_size": 100_000}}))


# ---------------------------------------------------------------------------- params.yaml edited during a stage
def edit_during(edit):
    def stage_fn(cfg):
        edit()
    stage_fn.__module__ = "pipeline.train"  # stage.run names the stage, and reads its params in dvc.yaml, by module
    return stage_fn


def test_params_edited_during_a_stage_fail_it_retryably(tmp_path, monkeypatch, capsys):
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())  # which params the train stage records
    params = tmp_path / "params.yaml"
    original = render("tiny")
    params.write_text(original)
    monkeypatch.chdir(tmp_path)

    stage.run(edit_during(lambda: params.write_text("# a comment\n" + original)))  # the same values: it succeeds
    stage.run(edit_during(lambda: params.write_text(original.replace("seed: 1", "seed: 7", 1))))
    assert load_config(params).sample.seed == 7  # a group train does not read: nothing dvc.lock records changed

    params.write_text(original)
    tiny_steps = load_config(params).train.steps
    with pytest.raises(SystemExit) as exit_info:
        stage.run(edit_during(lambda: params.write_text(original.replace(f"steps: {tiny_steps}", "steps: 99", 1))))
    assert exit_info.value.code == stage.EXIT_TEMPORARY
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: train: params.yaml changed while the stage ran "
                                               f"(train.steps = {tiny_steps} when it started, 99 now)")
    assert "re-run (dvc repro)" in err[0]


# ---------------------------------------------------------------------------- the stage's command line
@pytest.fixture()
def project(tmp_path):
    project = copy_project(tmp_path / "p")
    use_profile(project, "tiny")
    return project


@pytest.mark.parametrize("params, fragment", [
    ("", "error: prepare: params.yaml is empty"),
    ("seed: 0\nseed: 1\n", "error: prepare: params.yaml sets seed twice (lines 1 and 2)"),
    ("model:\n  norm_groups: 0\n", "error: prepare: model.norm_groups = 0 is out of range"),
    ("sample:\n  guidance: .inf\n", "error: prepare: sample.guidance = inf must be a finite number"),
    ("runtime:\n  device: cuda:abc\n", "error: prepare: runtime.device = 'cuda:abc' is out of range"),
    ("model:\n  num_classes: 7\n", "error: prepare: model.num_classes = 7 but the training labels run from 0 to 9"),
    ("train:\n  batch_size: 1000000000\n", "error: prepare: train.batch_size = 1000000000 needs at least"),
])
def test_the_stage_says_it_in_one_line_with_exit_2_and_writes_nothing(project, params, fragment):
    (project / "params.yaml").write_text(params)
    proc = run([sys.executable, "-m", "pipeline.prepare"], cwd=project, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(fragment), proc.stderr
    assert not (project / "data").exists()
