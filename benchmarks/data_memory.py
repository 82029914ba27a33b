"""Streamed training data: the train loop's peak memory against the data set's size, and its speed against
the data held in memory.

Memory: for each size, a prepared split of random 32x32 RGB images (ddpm.data.save_split, as the prepare
stage writes it) and the `tiny` profile's U-Net trained on it for a few steps in a fresh process, which
reports its peak resident memory (VmHWM). The split is memory-mapped and read a batch at a time
(ddpm.batches.read_images), so the peak should not grow with the data set; `--in-memory` loads it first,
for contrast. Speed: the default profile's training on the default's digits, from its prepared split on disk
and from the same images in memory, rounds alternating (images/s).

    python -m benchmarks.data_memory --sizes 20000 200000 --rounds 3
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import harness


def child(split: str, mode: str, profile: str, steps: int) -> dict:
    """In a fresh process: train `steps` steps on the split; peak RSS and images/s."""
    import dataclasses
    import time

    import numpy as np

    from ddpm.data import load_split
    from ddpm.train import train

    cfg = harness.config(profile, [])
    data = load_split(split)
    images = np.array(data.images) if mode == "in-memory" else data.images
    shape = images.shape[1:]
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, image_size=shape[0], channels=shape[2]),
        model=dataclasses.replace(cfg.model, attention_resolutions=()) if profile == "tiny" else cfg.model,
        train=dataclasses.replace(cfg.train, steps=steps, eval_every=0, log_every=steps, precision="fp32"))
    t0 = time.perf_counter()
    result = train(cfg, images, labels=data.labels if cfg.model.num_classes else None, progress=False)
    wall = time.perf_counter() - t0
    return {"peak_rss_mb": peak_rss_mb(),
            "images_per_s": result.timing["images_per_s"], "wall_s": wall}


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (VmHWM). Not ru_maxrss: Linux carries a forking
    parent's resident size into the child's ru_maxrss across exec, so a parent holding the images would count."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def run_child(split: Path, mode: str, profile: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-m", __spec__.name, "--child", str(split), mode, profile, str(steps)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def random_split(folder: Path, n: int) -> Path:
    import numpy as np

    from ddpm.data import Dataset, save_split

    rng = np.random.default_rng(0)
    save_split(folder / f"random-{n}", Dataset(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                                               np.zeros(n, dtype=np.int64), ["any"]))
    return folder / f"random-{n}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))))
        return
    ap = harness.parser(__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--steps", type=int, default=30, help="training steps per memory run")
    ap.add_argument("--rounds", type=int, default=3, help="speed: alternating rounds on the default")
    ap.add_argument("--speed-steps", type=int, default=40)
    ap.add_argument("--workspace", type=Path, default=Path("."),
                    help="a workspace whose data/prepared/train holds the default's digits (after dvc repro prepare)")
    args = ap.parse_args()
    results = harness.Results(Path(__file__).stem, args)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'images':>8} {'streamed peak MB':>17} {'in memory peak MB':>18}")
        for n in args.sizes:
            split = random_split(Path(tmp), n)
            streamed, loaded = (run_child(split, mode, "tiny", args.steps) for mode in ("streamed", "in-memory"))
            print(f"{n:>8} {streamed['peak_rss_mb']:>17.0f} {loaded['peak_rss_mb']:>18.0f}", flush=True)
            results.add(kind="memory", images=n, streamed=streamed, in_memory=loaded)
            (split / "images.npy").unlink()
    digits = args.workspace / "data/prepared/train"
    rates: dict[str, list[float]] = {"streamed": [], "in-memory": []}
    for r, mode in harness.rounds(list(rates), args.rounds):
        rates[mode].append(run_child(digits, mode, "default", args.speed_steps)["images_per_s"])
        print(f"round {r + 1}: default, {mode}: {rates[mode][-1]:.1f} images/s", flush=True)
    median = {mode: statistics.median(v) for mode, v in rates.items()}
    print(f"default, median of {args.rounds} rounds: streamed {median['streamed']:.1f} images/s, in memory "
          f"{median['in-memory']:.1f} ({median['streamed'] / median['in-memory']:.3f}x)")
    results.add(kind="speed", **{mode: v for mode, v in rates.items()}, ratio=median["streamed"] / median["in-memory"])


if __name__ == "__main__":
    main()
