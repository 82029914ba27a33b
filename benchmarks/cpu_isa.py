"""What `runtime.cpu_isa` and `train.precision` cost on this CPU: the default profile's work per setting.

Each setting runs in its own process (the kernel pin must be in the environment before torch loads),
in alternating rounds: a training step of the default U-Net at the default batch size, sampling with
the default sampler (batch 250) and Inception features (batch 50). Prints images/s per setting and round,
and whether each setting's training loss after a few steps equals the default's (native fp32) bit for bit.

    python -m benchmarks.cpu_isa --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import harness
from ddpm.config.groups import NATIVE_CPU_ENV, PORTABLE_CPU_ENV

SETTINGS = {  # name: (environment added before torch loads, autocast bf16)
    "avx2 fp32": (PORTABLE_CPU_ENV, False),
    "native fp32 (default)": (NATIVE_CPU_ENV, False),
    "native bf16": (NATIVE_CPU_ENV, True),
}


def measure(bf16: bool, seconds: float) -> dict[str, float]:
    """Runs in the child process: images/s of each kind of work, and a loss to compare bits."""
    import torch

    from ddpm.config import Config
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.evaluation.feature_spaces import FidHelperInception
    from ddpm.sampling import generate
    from ddpm.unet import UNet

    cfg = Config()
    torch.manual_seed(0)
    model = UNet(cfg.model, 28, 1)
    diffusion = GaussianDiffusion.from_config(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batch = cfg.train.batch_size
    x = torch.rand(batch, 1, 28, 28) * 2 - 1

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion.training_loss(model, x, torch.randint(0, 1000, (batch,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def rate(work, images: int) -> float:
        work()  # warm-up
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            work()
            done += images
        return done / (time.perf_counter() - t0)

    first_loss = [step() for _ in range(3)][-1]
    inception = FidHelperInception(FidHelperInception.NAME, ["2048"])
    digits = torch.randint(0, 256, (50, 3, 28, 28), dtype=torch.uint8)
    sample_cfg = dataclasses.replace(cfg.sample, num_samples=250, batch_size=250, autoguidance=0.0)  # no guide here
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        sampling = rate(lambda: generate(model, diffusion, sample_cfg, progress=False), 250)
    with torch.inference_mode():
        features = rate(lambda: inception(digits), 50)
    return {"train": rate(step, batch), "sample": sampling, "inception": features, "loss": first_loss}


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="per kind of work and round")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "bf16", args.seconds)))
        return

    rows: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    for r, name in harness.rounds(SETTINGS, args.rounds):
        extra, bf16 = SETTINGS[name]
        env = {k: v for k, v in os.environ.items() if k not in PORTABLE_CPU_ENV} | extra
        out = subprocess.run([sys.executable, "-m", __spec__.name, "--child", "bf16" if bf16 else "fp32",
                              "--seconds", str(args.seconds)], env=env, capture_output=True, text=True,
                             check=True).stdout
        rows[name].append(json.loads(out.strip().splitlines()[-1]))
        print(f"round {r + 1}: {name}: {rows[name][-1]}", flush=True)
    results = harness.Results(Path(__file__).stem, args)
    base = rows["native fp32 (default)"][0]["loss"]
    print(f"\n{'setting':<22} {'train img/s':>12} {'sample img/s':>13} {'inception img/s':>16}  loss bits = default")
    for name, runs in rows.items():
        med = {k: statistics.median(run[k] for run in runs) for k in ("train", "sample", "inception")}
        same_bits = all(run["loss"] == base for run in runs)
        print(f"{name:<22} {med['train']:>12.1f} {med['sample']:>13.1f} {med['inception']:>16.2f}  {same_bits}")
        results.add(setting=name, **{f"{k}_images_per_s": v for k, v in med.items()},
                    loss_bits_equal_default=same_bits, rounds=runs)


if __name__ == "__main__":
    main()
