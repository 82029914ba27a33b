"""Where a training step's time goes: torch.profiler over our U-Net + L_simple + AdamW step.

Prints the operators with the most self time (forward and backward together), and the share
of the step each family of operators takes (convolution, normalisation, attention, optimizer,
...), so that a change to the model or the loop can be judged by the numbers it moves.

    python -m benchmarks.profile_train                       # default CPU model, batch 64
    python -m benchmarks.profile_train --size cifar10 --device cuda --precision bf16 --batch 128
    python -m benchmarks.profile_train -S model.base_channels=32    # the profile's model, overridden
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import harness
from benchmarks.train_throughput import PROFILES, make_step, ours

# operator name fragments -> family (first match wins; backward ops carry the forward's name)
FAMILIES = [
    ("attention", ("attention", "sdpa", "bmm", "softmax")),
    ("convolution", ("conv",)),
    ("normalisation", ("group_norm", "native_group_norm")),
    ("activation", ("silu",)),
    ("optimizer", ("_foreach", "adam")),
    ("grad clip", ("norm", "clip")),
    ("linear", ("addmm", "mm", "linear")),
    ("resampling", ("upsample", "interpolate")),
    ("elementwise", ("add", "mul", "sub", "div", "cat", "copy", "fill", "zero", "pow", "sqrt", "exp")),
]


def family(name: str) -> str:
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--size", choices=sorted(PROFILES), default="default")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="profiled steps (after 3 warm-up steps)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--top", type=int, default=15)
    harness.add_overrides(ap)
    args = ap.parse_args()
    results = harness.Results(Path(__file__).stem, args, args.device)

    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = harness.config(PROFILES[args.size], args.overrides)
    model, loss_fn = ours(cfg, device)
    x0 = torch.randn(args.batch, cfg.data.channels, cfg.data.image_size, cfg.data.image_size, device=device)
    step = make_step(model, loss_fn, x0, torch.bfloat16 if args.precision == "bf16" else None)
    for _ in range(3):
        step()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        harness.synchronize(device)

    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events)
    print(f"profile: {args.size} model, batch {args.batch}, {args.precision}, {device}, {args.steps} steps, "
          f"threads {torch.get_num_threads()}; {total / 1e3 / args.steps:.1f} ms of self time per step\n")
    results.add(row="step", ms_per_step=total / 1e3 / args.steps)
    print(f"{'operator':<52} {'ms/step':>9} {'share':>7} {'calls/step':>11}")
    for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[: args.top]:
        t = getattr(e, key)
        print(f"{e.key[:52]:<52} {t / 1e3 / args.steps:>9.2f} {t / total:>7.1%} {e.count / args.steps:>11.0f}")
        results.add(row="operator", name=e.key, ms_per_step=t / 1e3 / args.steps, share=t / total,
                    calls_per_step=e.count / args.steps)

    shares: dict[str, float] = defaultdict(float)
    for e in events:
        shares[family(e.key)] += getattr(e, key)
    print(f"\n{'family':<16} {'ms/step':>9} {'share':>7}")
    for fam, t in sorted(shares.items(), key=lambda kv: kv[1], reverse=True):
        print(f"{fam:<16} {t / 1e3 / args.steps:>9.2f} {t / total:>7.1%}")
        results.add(row="family", name=fam, ms_per_step=t / 1e3 / args.steps, share=t / total)


if __name__ == "__main__":
    main()
