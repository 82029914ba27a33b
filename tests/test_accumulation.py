"""Memory options that keep the numbers: train.accumulate (k micro-batches make one batch's update) and
train.activation_checkpointing (activations recomputed in the backward pass), alone, together and under DDP."""

import dataclasses
import json
import sys

import pytest
import torch

from ddpm.config import Config
from ddpm.data import load_splits
from ddpm.errors import ConfigError
from ddpm.train import train
from tests.helpers import ROOT, run
from tests.test_distributed import CFG, TOLERANCE, free_port


def with_train(**changes) -> Config:
    return dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, **changes))


@pytest.fixture(scope="module")
def images():
    return load_splits(CFG.data, seed=0).train.images


@pytest.fixture(scope="module")
def whole(images):
    return train(with_train(steps=4), images, progress=False)


@pytest.mark.parametrize("changes", [{"accumulate": 4}, {"accumulate": 3}, {"activation_checkpointing": True},
                                     {"accumulate": 2, "activation_checkpointing": True, "importance_sampling": True,
                                      "loss": "vlb"}])
def test_memory_options_give_the_whole_batchs_update(images, whole, changes):
    """16 images a step as 4 micro-batches of 4 (or 6, 5, 5): each loss weighted by its share, so the summed
    gradients, the clipped update, the EMA and the logged loss are one batch's, to float rounding."""
    if "loss" in changes:  # L_vlb trains the variance: compare with the same model and loss in one batch
        model = dataclasses.replace(CFG.model, learn_sigma=True)
        cfg = dataclasses.replace(with_train(steps=4, **changes), model=model)
        reference = train(dataclasses.replace(with_train(steps=4, loss="vlb", importance_sampling=True), model=model),
                          images, progress=False)
    else:
        cfg, reference = with_train(steps=4, **changes), whole
    got = train(cfg, images, progress=False)
    assert [h["loss"] for h in got.history] == pytest.approx([h["loss"] for h in reference.history], rel=TOLERANCE)
    for a, b in zip(got.model.parameters(), reference.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)  # Adam divides by sqrt(v): rounding shows
    assert not torch.equal(next(got.model.parameters()), next(train(with_train(steps=1), images,
                                                                    progress=False).model.parameters()))


def test_more_micro_batches_than_images_is_one_line():
    with pytest.raises(ConfigError, match=r"train\.accumulate = 17 is out of range: expected 1 to train\.batch_size"):
        Config(train=dataclasses.replace(CFG.train, accumulate=17)).validate()


@pytest.mark.slow  # torchrun: two processes, each importing torch
def test_two_processes_accumulating_match_one_process_at_the_same_global_batch(tmp_path, whole):
    """DDP with train.accumulate 2: each rank's 8 images as 2 micro-batches, gradients averaged once a step."""
    out = tmp_path / "history.json"
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", "tests/ddp_worker.py", str(tmp_path / "resume"), "4", str(out), "4", "2"],
        cwd=ROOT)
    ddp = json.loads(out.read_text())
    assert ddp["stats"]["processes"] == 2
    assert [h["loss"] for h in ddp["history"]] == pytest.approx([h["loss"] for h in whole.history], rel=TOLERANCE)


def saved_bytes(model, x, t) -> int:
    """The bytes autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x, t).sum()
    return total


def test_activation_checkpointing_keeps_a_fraction_of_the_activations():
    from ddpm.unet import UNet

    model = UNet(CFG.model, 28, 1).train()
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([1, 5, 9, 20])
    kept = saved_bytes(model, x, t)
    model.checkpoint_activations = True
    assert saved_bytes(model, x, t) < kept / 3
