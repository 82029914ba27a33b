"""What the benchmarks share: the CPU kernel settings, params.yaml overrides, timing, scoring, the peers, results.

Importing this module loads neither torch nor the `pipeline` package (whose import sets the CPU kernels
as params.yaml says): a benchmark may set the kernels after importing it, before torch loads. The parts
that need torch, the library or the pipeline import them where they run, by which time the benchmark
has loaded torch and chosen its kernels. The benchmarks run this CPU's native kernels unless they set others.

Every benchmark prints its table and, given `--jsonl PATH`, appends one JSON object per result row to
PATH (`Results`): the benchmark, the machine, the arguments, and the row's numbers beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib.util import find_spec
from pathlib import Path

from ddpm.config.groups import CPU_KERNEL_ENV, RuntimeConfig  # torch-free


# ---------------------------------------------------------------------------- the CPU kernels
def set_cpu_kernels() -> None:
    """Set the CPU kernels' environment of the default `runtime.cpu_isa`, as the DAG's stages do (pipeline/__init__.py).

    Call it before torch loads: torch reads these variables once. In a process that has loaded torch
    already (a test importing a benchmark) nothing is set, for the reason pipeline/__init__.py gives.
    """
    if "torch" not in sys.modules:
        os.environ.update(CPU_KERNEL_ENV[RuntimeConfig.cpu_isa])


# ---------------------------------------------------------------------------- the command line
def parser(doc: str, jsonl: Path | None = None) -> argparse.ArgumentParser:
    """An argument parser described by the first line of `doc`, with `--jsonl PATH` (default `jsonl`)."""
    ap = argparse.ArgumentParser(prog=f"python -m benchmarks.{Path(sys.argv[0]).stem}", description=doc.split("\n")[0])
    ap.add_argument("--jsonl", type=Path, default=jsonl, metavar="PATH",
                    help=f"append one JSON object per result row to PATH (default: {jsonl or 'none'})")
    return ap


def add_overrides(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a params.yaml override, as `dvc exp run -S` takes it (repeatable)")


def config(profile: str, overrides: list[str]):
    """The profile's Config with `overrides` applied and checked as the Prefect flow applies them
    (pipeline/overrides.py, DVC's own `-S` code), in a scratch folder: params.yaml is left alone."""
    from ddpm.config import load_config
    from ddpm.errors import ConfigError
    from pipeline.overrides import set_params
    from pipeline.paths import PARAMS
    from pipeline.profile import render

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / PARAMS).write_text(render(profile))
        try:
            set_params(root, overrides)
        except ConfigError as exc:
            raise SystemExit(f"error: {exc}") from None
        return load_config(root / PARAMS)


# ---------------------------------------------------------------------------- results
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict:
    """The CPU, the torch build, the device and the CPU kernels a result was measured with."""
    import torch

    from ddpm.runtime import cpu_kernels_pinned

    out = {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads(),
           "cpu_kernels": "avx2" if cpu_kernels_pinned() else "native", "torch": torch.__version__,
           "device": device}
    if torch.device(device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


class Results:
    """The rows of one benchmark run, appended to `args.jsonl` (when given) as one JSON object a line."""

    HEAD = ("benchmark", "machine", "args")

    def __init__(self, benchmark: str, args: argparse.Namespace, device: str = "cpu"):
        self.benchmark, self.args, self.device = benchmark, args, device
        self.path: Path | None = args.jsonl
        self.head: dict | None = None  # the machine is read at the first row, once the benchmark has loaded torch

    def add(self, **numbers) -> None:
        if clash := sorted(set(numbers) & set(self.HEAD)):
            raise ValueError(f"a row may not name {clash}: the harness writes those")
        if self.path is None:
            return
        if self.head is None:
            self.head = {"benchmark": self.benchmark, "machine": machine(self.device), "args": vars(self.args)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({**self.head, **numbers}, default=str) + "\n")


# ---------------------------------------------------------------------------- timing
def synchronize(device) -> None:
    """Wait for queued device work, so that a host clock reads the device's time."""
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def elapsed(fn: Callable[[], object], repeats: int = 1, device=None) -> float:
    """Seconds that `repeats` calls of `fn` take, the device work they queue included."""
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return time.perf_counter() - t0


def rounds(names: Iterable[str], n: int, alternate: bool = True) -> Iterator[tuple[int, str]]:
    """(round, name) for `n` rounds over every name; with `alternate` the order reverses every other round,
    so that load on the machine, drifting through a run, hits every contender alike."""
    names = list(names)
    for r in range(n):
        for name in names[::-1] if alternate and r % 2 else names:
            yield r, name


def paired(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a / b round by round: each ratio compares two measurements that the same load hit."""
    if len(a) != len(b):
        raise ValueError(f"paired ratios need as many rounds on each side ({len(a)} and {len(b)})")
    return [x / y for x, y in zip(a, b)]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, minimum and maximum of `values`, and the quartiles q1 and q3 where there are four or more."""
    out = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    if len(values) >= 4:
        out["q1"], _, out["q3"] = statistics.quantiles(values, n=4)
    return out


# ---------------------------------------------------------------------------- scoring
def score(images, workspace: Path, cfg, space_name: str) -> dict:
    """`images` scored in one feature space as the evaluate stage scores them (ddpm.evaluation), against the
    references of a workspace where `dvc repro reference` has run; domain space adds coverage."""
    from ddpm.data import load_split
    from ddpm.evaluation.feature_spaces import domain_space, extract, inception_space
    from ddpm.evaluation.scores import Reference, coverage, evaluate_space

    test = load_split(workspace / "data/prepared/test")
    ref = Reference.load(workspace / f"data/reference/{space_name}.npz")
    space = domain_space(workspace / "models/classifier.pt") if space_name == "domain" else inception_space()
    t0 = time.perf_counter()
    feats = extract(space, images, batch_size=50)
    m = evaluate_space(feats, ref, space.primary, cfg.evaluate, seed=cfg.seed)
    out = {"fid": m["fid"], "fid_floor": m["floor"]["fid"], "precision": m["precision"], "recall": m["recall"],
           "extract_s": time.perf_counter() - t0}
    if space_name == "domain":
        cov = coverage(feats["logits"], test.labels, test.class_names, cfg.evaluate.confidence,
                       real_logits=ref.floor["logits"])
        shares = [v["samples"] for v in cov["per_class"].values()]
        out |= {"confident": cov["confident_share"], "confident_real": cov["confident_share_real"],
                "class_min": min(shares), "class_max": max(shares), "class_tv": cov["class_share_tv"]}
    return out


# ---------------------------------------------------------------------------- the peers
PEER_MODULES = {"diffusers": "diffusers", "lucidrains": "denoising_diffusion_pytorch"}


def require_peers(names: Sequence[str]) -> None:
    """Stop, in one line, unless the peers' packages (the `bench` extra) are installed."""
    if missing := [PEER_MODULES[n].replace("_", "-") for n in names if find_spec(PEER_MODULES[n]) is None]:
        raise SystemExit(f"error: the peers' packages are not installed ({', '.join(missing)}: the `bench` extra; "
                         "pip install -e '.[bench]', or make bench)")


def attention_levels(cfg) -> list[bool]:
    """Per U-Net level, whether our model attends there (cfg.model.attention_resolutions)."""
    levels = len(cfg.model.channel_mult)
    return [cfg.data.image_size // 2**i in cfg.model.attention_resolutions for i in range(levels)]


def diffusers_unet(cfg, width: int, dropout: float = 0.0):
    """diffusers' UNet2DModel shaped as our U-Net (levels, blocks, attention, norm groups) at base width `width`."""
    from diffusers import UNet2DModel

    attn = attention_levels(cfg)
    return UNet2DModel(
        sample_size=cfg.data.image_size, in_channels=cfg.data.channels, out_channels=cfg.data.channels,
        block_out_channels=tuple(width * m for m in cfg.model.channel_mult), layers_per_block=cfg.model.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=cfg.model.norm_groups, attention_head_dim=None, dropout=dropout)


def lucidrains_unet(cfg, width: int, dropout: float = 0.0):
    """denoising-diffusion-pytorch's Unet shaped as our U-Net (levels, full attention) at base width `width`."""
    from denoising_diffusion_pytorch import Unet

    return Unet(dim=width, dim_mults=cfg.model.channel_mult, channels=cfg.data.channels, dropout=dropout,
                full_attn=tuple(attention_levels(cfg)), flash_attn=True)


def matched(build: Callable[[int], object], target: int) -> tuple[int, object]:
    """The base width whose parameter count is closest to `target` (widths keep GroupNorm divisible)."""
    from ddpm.unet import count_parameters

    best = None
    for width in range(4, 257, 4):
        try:
            model = build(width)
        except Exception:  # a width the peer's GroupNorm/heads cannot take
            continue
        gap = abs(count_parameters(model) - target)
        if best is None or gap < best[0]:
            best = (gap, width, model)
        if count_parameters(model) > 1.2 * target:
            break
    return best[1], best[2]
