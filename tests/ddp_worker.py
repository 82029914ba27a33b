"""Run under torchrun by tests/test_distributed.py: train the test config for `max_steps`, snapshots to argv[1]."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: make `tests` importable

from ddpm.data import load_splits
from ddpm.train import train
from tests.test_distributed import CFG

if __name__ == "__main__":
    resume, max_steps, history_out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    result = train(CFG, load_splits(CFG.data, seed=0).train.images, resume_path=resume, progress=False,
                   max_steps=max_steps)
    if dist.get_rank() == 0:
        with open(history_out, "w") as f:
            json.dump({"history": result.history, "stats": result.stats}, f)
    dist.destroy_process_group()
