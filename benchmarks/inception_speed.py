"""Inception feature extraction: the shipped TorchScript file against our eager network (ddpm.evaluation.inception).

Both run on the same digits in alternating rounds in one process; prints images/s of each at each
batch size, the ratio, and the largest feature difference relative to the largest feature.

    python -m benchmarks.inception_speed --rounds 3 --batches 10 25 50
"""

from __future__ import annotations

import statistics
from functools import partial
from pathlib import Path

import torch
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from benchmarks import harness
from ddpm.config.training import DataConfig
from ddpm.data import load_splits
from ddpm.evaluation.feature_spaces import FidHelperInception, fid_helper_weights, verify_weights
from ddpm.evaluation.inception import load_torchscript


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--batches", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results = harness.Results(Path(__file__).stem, args)

    digits = load_splits(DataConfig(), seed=0).test.images
    shipped = load_torchscript(verify_weights(fid_helper_weights()))
    ours = FidHelperInception(FidHelperInception.NAME, ["2048"])

    def as_shipped(x: torch.Tensor) -> torch.Tensor:  # what feature_spaces.py ran before ddpm.evaluation.inception
        x = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
        return shipped((x - 128.0) / 128.0)

    networks = {"shipped": as_shipped, "ours": lambda v: ours(v)[0]}
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"{'batch':>5} {'TorchScript img/s':>18} {'eager img/s':>12} {'ratio':>6} {'max |diff| / max':>17}")
    with torch.inference_mode():
        for batch in args.batches:
            x = torch.from_numpy(digits[:batch]).permute(0, 3, 1, 2).expand(-1, 3, -1, -1).contiguous()
            for fn in reversed(networks.values()):  # warm-up
                fn(x)
            rates: dict[str, list[float]] = {name: [] for name in networks}
            for _, name in harness.rounds(networks, args.rounds):
                rates[name].append(batch / harness.elapsed(partial(networks[name], x)))
            diff = (ours(x)[0] - as_shipped(x)).abs().max() / as_shipped(x).abs().max()
            a, b = statistics.median(rates["shipped"]), statistics.median(rates["ours"])
            print(f"{batch:>5} {a:>18.2f} {b:>12.2f} {b / a:>6.2f} {diff.item():>17.2e}", flush=True)
            results.add(batch=batch, torchscript_images_per_s=a, eager_images_per_s=b, ratio=b / a,
                        max_diff_over_max=diff.item(), rounds_images_per_s=rates)


if __name__ == "__main__":
    main()
