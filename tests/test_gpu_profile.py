"""The cifar10-gpu profile rehearsed on the CPU: its whole DAG on a folder of 32x32 RGB images made here, with
the overrides a CPU needs (a narrower U-Net of the same kind, a few steps, small N) and every GPU code path a
CPU can take: three channels, flips, bf16 autocast, torch.compile, the Inception space on RGB with the
training-set protocol, the registry and the report."""

import json
import shutil
import sys

import numpy as np
import pytest
import yaml

from tests.helpers import copy_project, run, use_profile

CPU_OVERRIDES = {
    "model": {"base_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "norm_groups": 8},
    "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1, "log_every": 2, "checkpoint_every": 2,
              "eval_every": 4, "eval_samples": 8, "eval_steps": 2},
    "runtime": {"device": "cpu"},
    "sample": {"num_samples": 16, "steps": 2, "batch_size": 8, "grid_size": 16},
    "classifier": {"epochs": 1, "batch_size": 16},
    "evaluate": {"kid_subset_size": 8, "kid_subsets": 2, "pr_k": 2, "batch_size": 16, "nll_images": 4,
                 "nll_terms": 2},
    "sweep": {"samplers": ["ddim"], "steps": [2], "num_samples": 8, "batch_size": 8},
}


def rgb_folder(root, per_class: int = 30):
    """Two classes of 32x32 RGB images: red-ish and blue-ish blobs on noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
            image[8:24, 8:24, 2 * c] = 200 + rng.integers(0, 55)
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
    return root


@pytest.mark.slow  # the whole DAG with torch.compile on the CPU: minutes
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_the_gpu_profile_runs_end_to_end_on_the_cpu(tmp_path):
    project = copy_project(tmp_path / "p")
    use_profile(project, "cifar10-gpu")
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert (params["train"]["precision"], params["train"]["compile"], params["train"]["hflip"]) == ("bf16", True, True)
    for group, values in CPU_OVERRIDES.items():
        params[group].update(values)
    params["data"].update(source="folder", root=str(rgb_folder(tmp_path / "images")))
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "gpu profile"]):
        run(cmd, cwd=project)
    run([sys.executable, "-m", "dvc", "repro"], cwd=project)

    metrics = lambda name: json.loads((project / f"reports/metrics/{name}.json").read_text())  # noqa: E731
    train = metrics("train")["train"]
    assert (train["steps"], train["precision"], train["device"]) == (4, "bf16", "cpu")
    evaluate = metrics("evaluate")
    assert evaluate["inception"]["n_samples"] == 16 and np.isfinite(evaluate["inception"]["fid"])
    assert evaluate["inception"]["train"]["n_reference"] == 48  # the papers' protocol: the 48 training images
    assert np.isfinite(evaluate["inception"]["train"]["fid"]) and np.isfinite(evaluate["nll"]["bits_per_dim"])
    with np.load(project / "samples/samples.npz") as f:
        assert f["images"].shape == (16, 32, 32, 3)
    assert int(json.loads((project / "models/registered.json").read_text())["version"]) >= 1
    report = (project / "reports/report.md").read_text()
    assert "training images' statistics (inception" in report and "Likelihood" in report
