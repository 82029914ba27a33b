"""DDP under torchrun: 2 CPU processes (gloo) train like one process on the same global batch,
and their checkpoint resumes in a single process."""

import dataclasses
import json
import socket
import sys

import pytest
import torch

from ddpm.config import Config
from ddpm.config.groups import RuntimeConfig
from ddpm.config.training import DataConfig, DiffusionConfig, ModelConfig, TrainConfig
from ddpm.data import load_splits
from ddpm.snapshots import SnapshotStore
from ddpm.train import train
from tests.helpers import ROOT, run

# dropout 0: dropout masks are drawn per process, the one thing two ranks cannot share with one process
CFG = Config(
    data=DataConfig(limit=200),
    model=ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(14,), norm_groups=4, dropout=0.0,
                      num_classes=0),
    diffusion=DiffusionConfig(timesteps=50),
    train=TrainConfig(steps=8, batch_size=16, warmup_steps=2, log_every=1, checkpoint_every=4, precision="fp32"),
    runtime=RuntimeConfig(device="cpu"),
)
TOLERANCE = 1e-4  # relative, on each logged loss: float reduction order differs, nothing else


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path, max_steps: int) -> dict:
    out = tmp_path / "history.json"
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", "tests/ddp_worker.py", str(tmp_path / "resume"), str(max_steps),
         str(out)], cwd=ROOT)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def single():
    return train(CFG, load_splits(CFG.data, seed=0).train.images, progress=False)


@pytest.mark.slow  # torchrun: two processes, each importing torch
def test_two_processes_match_one_at_the_same_global_batch(tmp_path, single):
    ddp = torchrun(tmp_path, max_steps=8)
    assert ddp["stats"]["processes"] == 2 and ddp["stats"]["steps"] == 8
    got, want = [h["loss"] for h in ddp["history"]], [h["loss"] for h in single.history]
    assert len(got) == len(want) == 8
    assert got == pytest.approx(want, rel=TOLERANCE)


@pytest.mark.slow  # torchrun: two processes, each importing torch
def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path, single):
    torchrun(tmp_path, max_steps=4)
    path, snapshot = SnapshotStore(tmp_path / "resume").latest(CFG.training_dict())
    assert path.name == "step-00000004.pt" and snapshot["step"] == 4
    assert not any(k.startswith("module.") for k in snapshot["model"])  # the bare model, not the DDP wrapper
    resumed = train(CFG, load_splits(CFG.data, seed=0).train.images, snapshots=SnapshotStore(tmp_path / "resume"),
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


@pytest.mark.slow  # torchrun: two processes, each importing torch
def test_sigterm_to_torchrun_stops_every_rank_with_one_snapshot_and_it_resumes(tmp_path, single):
    """Preemption: torchrun passes SIGTERM to its workers; they stop together at a step boundary,
    rank 0 writes the snapshot, the job exits non-zero within seconds, and one process resumes it."""
    import os
    import signal
    import subprocess
    import time

    from tests.helpers import env

    store = SnapshotStore(tmp_path / "resume")
    long_cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, steps=100_000))
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_addr=127.0.0.1", f"--master_port={free_port()}", "tests/ddp_worker.py",
                             str(tmp_path / "resume"), "100000", str(tmp_path / "out.json"), "100000"],
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not store.paths() and time.monotonic() < deadline:  # training is under way
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:  # the test failed: leave no workers behind
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and stopped_in < 30, out
    assert "stopped by SIGTERM at step" in out
    path, snapshot = store.latest(long_cfg.training_dict())
    step = snapshot["step"]
    assert path.name == f"step-{step:08d}.pt" and f"stopped by SIGTERM at step {step};" in out
    resumed = train(long_cfg, load_splits(CFG.data, seed=0).train.images, snapshots=store, progress=False,
                    max_steps=step + 2)
    assert resumed.step == step + 2


def test_on_gpus_each_rank_takes_its_local_gpu_and_joins_nccl(monkeypatch):
    """The NCCL branch up to device selection, on a machine without a GPU: rank 3 (local rank 1) of 4 sets
    cuda:1 as its device and asks for the NCCL backend; on CPUs the same call asks for gloo."""
    import torch.distributed as dist

    from ddpm.runtime import Distributed, init_distributed

    chosen, backends = [], []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", backends.append)
    rank = Distributed(rank=3, world_size=4, local_rank=1)
    assert init_distributed(rank, torch.device("cuda")) == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)] and backends == ["nccl"]
    assert init_distributed(rank, torch.device("cpu")) == torch.device("cpu") and backends == ["nccl", "gloo"]
    assert init_distributed(Distributed(), torch.device("cuda")) == torch.device("cuda") and len(backends) == 2
