"""Run under torchrun by tests/test_distributed.py: train the test config (argv[4]: its steps, argv[5]: its
train.accumulate) for `max_steps` steps, snapshots in argv[1], history and stats to argv[3]."""

import dataclasses
import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: make `tests` importable

from ddpm.data import load_splits
from ddpm.snapshots import SnapshotStore
from ddpm.train import train
from tests.test_distributed import CFG

if __name__ == "__main__":
    resume, max_steps, history_out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    cfg = CFG if len(sys.argv) < 5 else dataclasses.replace(CFG, train=dataclasses.replace(CFG.train,
                                                                                          steps=int(sys.argv[4])))
    if len(sys.argv) > 5:  # argv[5]: train.accumulate
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, accumulate=int(sys.argv[5])))
    result = train(cfg, load_splits(cfg.data, seed=0).train.images, snapshots=SnapshotStore(resume), progress=False,
                   max_steps=max_steps)
    if dist.get_rank() == 0:
        with open(history_out, "w") as f:
            json.dump({"history": result.history, "stats": result.stats}, f)
    dist.destroy_process_group()
