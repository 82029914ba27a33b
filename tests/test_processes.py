"""`torchrun` on 2 gloo processes writes the bytes one process writes, for each stage that splits its network
work: sample (each image seeded by its index, each rank drawing every second batch), reference and evaluate
(each rank extracting every second batch of features, and of the NLL bound's images); rank 0 writes."""

import json
import sys

import pytest
import yaml

from ddpm.checkpoints import save_checkpoint
from ddpm.data import load_splits
from ddpm.train import train
from tests.helpers import copy_project, run, use_profile
from tests.test_distributed import CFG, free_port

OUTPUTS = {"sample": "samples/samples.npz", "reference": "data/reference/domain.npz",
           "evaluate": "reports/metrics/evaluate.json"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """A tiny project whose stages ran in one process each, and the bytes they wrote."""
    project = copy_project(tmp_path_factory.mktemp("processes") / "p")
    use_profile(project, "tiny")
    params = yaml.safe_load((project / "params.yaml").read_text())
    # ddpm, every step's noise drawn: the stochastic case; 4 batches, the last one short, 2 for each rank
    params["sample"].update(num_samples=11, batch_size=3, sampler="ddpm", steps=4, grid_size=4, autoguidance=0.0)
    # several feature and NLL batches for each rank; the training set's statistics split too
    params["evaluate"].update(batch_size=3, train_statistics=True)
    params["runtime"]["device"] = "cpu"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "models").mkdir(exist_ok=True)
    save_checkpoint(project / "models/checkpoint.pt",
                    train(CFG, load_splits(CFG.data, seed=0).train.images, progress=False, max_steps=2).checkpoint)
    for stage in ("prepare", "classifier", "sample", "reference", "evaluate"):
        run(["env", "OMP_NUM_THREADS=1", sys.executable, "-m", f"pipeline.{stage}"], cwd=project)
    return project, {stage: (project / out).read_bytes() for stage, out in OUTPUTS.items()}


@pytest.mark.slow  # torchrun: two processes, each importing torch
@pytest.mark.parametrize("stage", list(OUTPUTS))
def test_two_processes_write_the_bytes_of_one(one_process, stage):
    project, written = one_process
    (project / OUTPUTS[stage]).unlink()
    # one thread a process, as torchrun sets it: float sums split over threads in another order
    proc = run(["env", "OMP_NUM_THREADS=1", sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                "--master_addr=127.0.0.1",
                f"--master_port={free_port()}", "-m", f"pipeline.{stage}"], cwd=project)
    assert (project / OUTPUTS[stage]).read_bytes() == written[stage]
    if stage == "sample":  # 11 images: batches 0-2 and 6-8 for rank 0, 3-5 and 9-10 for rank 1
        assert "process 0 of 2 takes 6 of 11 items (2 batches of 3)" in proc.stderr
        assert "process 1 of 2 takes 5 of 11 items (2 batches of 3)" in proc.stderr
    elif stage == "evaluate":
        assert json.loads(written[stage])["domain"]["train"]["n_reference"] > 100  # the papers' protocol, too
    if stage != "sample":  # each split shared: the held-out, floor, training or sample images, the NLL's images
        assert proc.stderr.count("process 1 of 2 takes") == proc.stderr.count("process 0 of 2 takes") >= 2
