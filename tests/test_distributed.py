"""DDP under torchrun: 2 CPU processes (gloo) train like one process on the same global batch,
and their checkpoint resumes in a single process."""

import dataclasses
import json
import socket
import sys

import pytest
import torch

from ddpm.config import Config, DataConfig, DiffusionConfig, ModelConfig, TrainConfig
from ddpm.data import load_splits
from ddpm.train import load_checkpoint, train
from tests.helpers import ROOT, run

# dropout 0: dropout masks are drawn per process, the one thing two ranks cannot share with one process
CFG = Config(
    data=DataConfig(limit=200),
    model=ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(14,), norm_groups=4, dropout=0.0),
    diffusion=DiffusionConfig(timesteps=50),
    train=TrainConfig(steps=8, batch_size=16, warmup_steps=2, log_every=1, checkpoint_every=4, precision="fp32",
                      device="cpu"),
)
TOLERANCE = 1e-4  # relative, on each logged loss: float reduction order differs, nothing else


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path, max_steps: int) -> dict:
    out = tmp_path / "history.json"
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", "tests/ddp_worker.py", str(tmp_path / "resume.pt"), str(max_steps),
         str(out)], cwd=ROOT)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def single():
    return train(CFG, load_splits(CFG.data, seed=0).train.images, progress=False)


def test_two_processes_match_one_at_the_same_global_batch(tmp_path, single):
    ddp = torchrun(tmp_path, max_steps=8)
    assert ddp["stats"]["processes"] == 2 and ddp["stats"]["steps"] == 8
    got, want = [h["loss"] for h in ddp["history"]], [h["loss"] for h in single.history]
    assert len(got) == len(want) == 8
    assert got == pytest.approx(want, rel=TOLERANCE)


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path, single):
    torchrun(tmp_path, max_steps=4)
    snapshot = load_checkpoint(tmp_path / "resume.pt")
    assert snapshot["step"] == 4
    assert not any(k.startswith("module.") for k in snapshot["model"])  # the bare model, not the DDP wrapper
    resumed = train(CFG, load_splits(CFG.data, seed=0).train.images, resume_path=tmp_path / "resume.pt",
                    progress=False)
    assert resumed.step == 8
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in single.history], rel=TOLERANCE)
    for a, b in zip(resumed.model.parameters(), single.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_a_global_batch_that_does_not_split_is_refused(monkeypatch):
    from ddpm.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "3")
    odd = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, batch_size=16))
    with pytest.raises(ConfigError, match="train.batch_size = 16 cannot be split across 3 processes"):
        train(odd, load_splits(CFG.data, seed=0).train.images[:32], progress=False)
