"""`torchrun -m pipeline.sample` on 2 gloo processes writes the bytes one process writes: each image is seeded by
its index, each rank draws every second batch, and rank 0 writes them all in index order."""

import sys

import numpy as np
import pytest
import yaml

from ddpm.checkpoints import save_checkpoint
from ddpm.data import load_splits
from ddpm.train import train
from tests.helpers import copy_project, run, use_profile
from tests.test_distributed import CFG, free_port


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("sample") / "p")
    use_profile(project, "tiny")
    params = yaml.safe_load((project / "params.yaml").read_text())
    # ddpm, every step's noise drawn: the stochastic case; 4 batches, the last one short, 2 for each rank
    params["sample"].update(num_samples=11, batch_size=3, sampler="ddpm", steps=4, grid_size=4, autoguidance=0.0)
    params["runtime"]["device"] = "cpu"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "models").mkdir(exist_ok=True)
    save_checkpoint(project / "models/checkpoint.pt",
                    train(CFG, load_splits(CFG.data, seed=0).train.images, progress=False, max_steps=2).checkpoint)
    return project


@pytest.mark.slow  # torchrun: two processes, each importing torch
def test_two_sampling_processes_write_the_bytes_of_one(project):
    run([sys.executable, "-m", "pipeline.sample"], cwd=project)
    one = (project / "samples/samples.npz").read_bytes()
    (project / "samples/samples.npz").unlink()
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}", "-m", "pipeline.sample"], cwd=project)
    assert "process 0 of 2 drew 6 of the 11 samples" in proc.stderr  # batches 0-2 and 6-8
    assert "process 1 of 2 drew 5 of the 11 samples" in proc.stderr  # batches 3-5 and 9-10
    two = (project / "samples/samples.npz").read_bytes()
    assert two == one
    with np.load(project / "samples/samples.npz") as f:
        images = f["images"]
    assert images.shape == (11, 28, 28, 1) and len({im.tobytes() for im in images}) == 11
