"""Time to quality: our default recipe against diffusers' and lucidrains' training defaults.

Each contender trains on the default profile's data (the 4,000 embedded training digits) on this
machine, at matched parameter count (within 10% of ours), and is scored by our evaluation: 1,000
samples, domain FID against the held-out split and the share the domain classifier is confident of
(inception FID at the largest budget with --inception). Wall clock counts training only.

- ours: the default recipe, unconditional as the peers are (profile mnist-uncond: the default without
  the digit classes), trained once per budget with train.steps scaled to it (the cosine LR decay ends
  with the run), sampled with its autoguided sampler;
- diffusers: examples/unconditional_image_generation/train_unconditional.py's defaults: UNet2DModel,
  DDPMScheduler (1,000 steps, linear betas, eps-prediction), AdamW lr 1e-4 (betas 0.95/0.999,
  weight decay 1e-6), cosine LR with 500 warm-up steps over its default 100 epochs, batch 16,
  gradient clipping at 1, no EMA; sampled with DDIM, 50 steps;
- lucidrains: denoising-diffusion-pytorch's GaussianDiffusion + Trainer defaults: Unet, sigmoid
  betas, v-prediction, Adam lr 1e-4 (betas 0.9/0.99), batch 16, EMA 0.995 every 10 steps, gradient
  clipping at 1; sampled with its DDIM, 50 steps.
Flips are off for all three (digits are not mirror-symmetric; lucidrains' Trainer flips by default).
Each peer trains once for the longest budget and is scored at every budget from a snapshot.
Every contender trains first, back to back (the timed part: run it on a machine nothing else uses);
then all are sampled and scored.
All three run on the default DAG's kernels (runtime.cpu_isa: native, fp32, as `make repro` trains);
--native leaves the environment's kernel settings as they are.

Prints one table and, for each contender, the wall clock it needs to reach our default's final
domain FID (interpolated between budgets; ">" when it never does) and its ratio to ours; `--out`
keeps them in one JSON file. `-S KEY=VALUE` overrides our recipe (mnist-uncond) as `dvc exp run -S` does.

    pip install -e '.[bench]'
    python -m benchmarks.time_to_quality --workspace . --inception
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import harness

if "--native" not in sys.argv:
    harness.set_cpu_kernels()  # before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ddpm.checkpoints import ema_weights_from_state  # noqa: E402
from ddpm.config import Config  # noqa: E402
from ddpm.data import load_split, to_model_input, to_uint8_images  # noqa: E402
from ddpm.diffusion import GaussianDiffusion  # noqa: E402
from ddpm.sampling import generate  # noqa: E402
from ddpm.train import train  # noqa: E402
from ddpm.unet import UNet, count_parameters  # noqa: E402


# ---------------------------------------------------------------------------- peers
class Diffusers:
    name = "diffusers"
    batch_size, epochs = 16, 100  # train_unconditional.py defaults

    def __init__(self, cfg: Config, width: int, n_train: int):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        self.model = harness.diffusers_unet(cfg, width)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.95, 0.999),
                                           weight_decay=1e-6, eps=1e-8)
        total = math.ceil(n_train / self.batch_size) * self.epochs
        self.lr = get_scheduler("cosine", optimizer=self.optimizer, num_warmup_steps=500, num_training_steps=total)

    def step(self, x0: torch.Tensor) -> None:
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],))
        loss = F.mse_loss(self.model(self.scheduler.add_noise(x0, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.lr.step()
        self.optimizer.zero_grad()

    def snapshot(self) -> dict:
        return copy.deepcopy(self.model.state_dict())

    @torch.no_grad()
    def sample(self, state: dict, n: int, seed: int, cfg: Config) -> np.ndarray:
        from diffusers import DDIMScheduler

        model = copy.deepcopy(self.model)
        model.load_state_dict(state)
        model.eval()
        ddim = DDIMScheduler.from_config(self.scheduler.config)
        generator = torch.Generator().manual_seed(seed)
        out = []
        for i in range(0, n, 250):
            x = torch.randn((min(250, n - i), cfg.data.channels, cfg.data.image_size, cfg.data.image_size),
                            generator=generator)
            ddim.set_timesteps(50)
            for t in ddim.timesteps:
                x = ddim.step(model(x, t).sample, t, x, eta=0.0).prev_sample
            out.append(to_uint8_images(x))
        return np.concatenate(out)


class Lucidrains:
    name = "lucidrains"
    batch_size = 16  # Trainer defaults

    def __init__(self, cfg: Config, width: int, n_train: int):
        from denoising_diffusion_pytorch import GaussianDiffusion as LucidrainsDiffusion
        from ema_pytorch import EMA

        self.diffusion = LucidrainsDiffusion(harness.lucidrains_unet(cfg, width), image_size=cfg.data.image_size,
                                             sampling_timesteps=50)  # sampling only; training takes all 1,000
        self.model = self.diffusion.model
        self.optimizer = torch.optim.Adam(self.diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
        self.ema = EMA(self.diffusion, beta=0.995, update_every=10)

    def step(self, x0: torch.Tensor) -> None:
        loss = self.diffusion((x0 + 1) / 2)  # the Trainer feeds [0, 1] images; auto_normalize maps them to [-1, 1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.diffusion.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.ema.update()

    def snapshot(self) -> dict:
        return copy.deepcopy(self.ema.ema_model.state_dict())

    @torch.no_grad()
    def sample(self, state: dict, n: int, seed: int, cfg: Config) -> np.ndarray:
        model = copy.deepcopy(self.ema.ema_model)
        model.load_state_dict(state)
        model.eval()
        torch.manual_seed(seed)
        out = [to_uint8_images(model.sample(batch_size=min(250, n - i)) * 2 - 1) for i in range(0, n, 250)]
        return np.concatenate(out)


def train_peer(peer, images: np.ndarray, budgets_s: list[float], seed: int) -> dict[float, dict]:
    """Train until the last budget; a snapshot of the weights it samples with at each budget."""
    torch.manual_seed(seed)
    data = torch.from_numpy(images)
    order = torch.Generator().manual_seed(seed)
    snapshots, trained_s, step = {}, 0.0, 0
    pending = sorted(budgets_s)
    peer.model.train()
    while pending:
        t0 = time.perf_counter()
        peer.step(to_model_input(data[torch.randint(0, len(data), (peer.batch_size,), generator=order)]))
        trained_s += time.perf_counter() - t0
        step += 1
        if trained_s >= pending[0]:
            snapshots[pending.pop(0)] = {"state": peer.snapshot(), "steps": step, "wall_s": trained_s}
            print(f"  {peer.name}: {step} steps in {trained_s:.0f} s", flush=True)
    return snapshots


# ---------------------------------------------------------------------------- ours
def ours_at(cfg: Config, images: np.ndarray, steps: int) -> tuple[Callable[[], np.ndarray], dict]:
    """Train for `steps`; the sampler of the run's EMA weights (as the sample stage samples) and the run's info."""
    run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))
    result = train(run_cfg, images, progress=False)
    ema, guide, _ = ema_weights_from_state(result.checkpoint, "cpu")
    diffusion = GaussianDiffusion.from_config(cfg)
    return (lambda: generate(ema, diffusion, cfg.sample, guide=guide, progress=False),
            {"steps": steps, "wall_s": result.timing["train_s"]})


def time_to_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """The first wall clock at which FID reaches `target`, interpolated linearly between budgets."""
    for (t0, f0), (t1, f1) in zip([(0.0, math.inf)] + points, points):
        if f1 <= target:
            return t1 if not math.isfinite(f0) else t0 + (t1 - t0) * (f0 - target) / (f0 - target + (target - f1))
    return None


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--workspace", type=Path, default=Path("."), help="where `dvc repro reference` has run")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                    help="our budgets as shares of the default's train.steps")
    ap.add_argument("--peer-budgets", type=float, nargs="+", default=[0.25, 0.5, 1.0, 1.5, 2.0],
                    help="the peers' budgets as multiples of our default's wall clock")
    ap.add_argument("--inception", action="store_true", help="inception FID at each contender's largest budget")
    ap.add_argument("--peers", nargs="*", choices=("diffusers", "lucidrains"), default=["diffusers", "lucidrains"])
    ap.add_argument("--samples", type=int, default=Config().sample.num_samples,
                    help="images scored per point (the default's sample.num_samples; fewer only for a smoke test)")
    ap.add_argument("--native", action="store_true", help="the environment's kernel settings instead of the default's")
    ap.add_argument("--out", type=Path, default=Path("reports/time_to_quality.json"))
    harness.add_overrides(ap)
    args = ap.parse_args()
    harness.require_peers(args.peers)
    results = harness.Results(Path(__file__).stem, args)

    cfg = harness.config("mnist-uncond", args.overrides)  # the default, unconditional as the peers are
    cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, num_samples=args.samples))
    images = load_split(args.workspace / "data/prepared/train").images
    rows: list[dict] = []

    def scored(name: str, samples: np.ndarray, info: dict, inception: bool) -> None:
        row = {"contender": name, **info, "domain": harness.score(samples, args.workspace, cfg, "domain")}
        if inception:
            row["inception"] = harness.score(samples, args.workspace, cfg, "inception")
        rows.append(row)
        print(f"{name:<11} {info['steps']:>6} steps {info['wall_s']:>6.0f} s  domain FID {row['domain']['fid']:.3f}  "
              f"confident {row['domain']['confident']:.1%}" +
              (f"  inception FID {row['inception']['fid']:.2f}" if inception else ""), flush=True)

    # every contender trains first (the timed part, back to back), then all are sampled and scored
    jobs: list[tuple[str, dict, Callable[[], np.ndarray], bool]] = []
    for fraction in sorted(args.fractions):
        draw, info = ours_at(cfg, images, max(1, round(cfg.train.steps * fraction)))
        print(f"  ours: {info['steps']} steps in {info['wall_s']:.0f} s", flush=True)
        jobs.append(("ours", info, draw, args.inception and fraction == max(args.fractions)))
    default_s = jobs[-1][1]["wall_s"]

    n_ours = count_parameters(UNet(cfg.model, cfg.data.image_size, cfg.data.channels))
    for peer_cls, build in ((Diffusers, harness.diffusers_unet), (Lucidrains, harness.lucidrains_unet)):
        if peer_cls.name not in args.peers:
            continue
        width, _ = harness.matched(lambda w: build(cfg, w), n_ours)
        peer = peer_cls(cfg, width, len(images))
        n_peer = count_parameters(peer.model)
        print(f"{peer.name}: width {width}, {n_peer / 1e6:.3f}M parameters (ours {n_ours / 1e6:.3f}M)", flush=True)
        budgets = [b * default_s for b in args.peer_budgets]
        for budget, snap in sorted(train_peer(peer, images, budgets, cfg.seed).items()):
            jobs.append((peer.name, {"steps": snap["steps"], "wall_s": snap["wall_s"], "parameters": n_peer},
                         lambda peer=peer, snap=snap: peer.sample(snap["state"], cfg.sample.num_samples,
                                                                  cfg.sample.seed, cfg),
                         args.inception and budget == max(budgets)))

    print("training done: sampling and scoring", flush=True)
    for name, info, draw, inception in jobs:
        scored(name, draw(), info, inception)
    target = [r for r in rows if r["contender"] == "ours"][-1]["domain"]["fid"]

    print(f"\ntime to quality on {torch.get_num_threads()} threads, torch {torch.__version__}; target: our default's "
          f"final domain FID {target:.3f} (N = {cfg.sample.num_samples}, {default_s:.0f} s of training)")
    print(f"{'contender':<11} {'steps':>6} {'train s':>8} {'domain FID':>11} {'confident':>10} {'inception FID':>14}")
    for r in rows:
        inc = f"{r['inception']['fid']:.2f}" if "inception" in r else ""
        print(f"{r['contender']:<11} {r['steps']:>6} {r['wall_s']:>8.0f} {r['domain']['fid']:>11.3f} "
              f"{r['domain']['confident']:>10.1%} {inc:>14}")
        results.add(row="point", **r)
    reach = {}
    for name in ("ours", *args.peers):
        points = [(r["wall_s"], r["domain"]["fid"]) for r in rows if r["contender"] == name]
        reach[name] = (time_to_reach(points, target), max(p[0] for p in points))
    ours_s = reach["ours"][0]
    for name, (t, longest) in reach.items():
        print(f"{name:<11} reaches FID {target:.3f} after " +
              (f"{t:.0f} s ({t / ours_s:.2f}x ours)" if t is not None else
               f"more than {longest:.0f} s (more than {longest / ours_s:.2f}x ours)"))
        results.add(row="reach", contender=name, target_fid=target, reach_s=t, longest_s=longest,
                    ratio_to_ours=None if t is None else t / ours_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"target_fid": target, "rows": rows,
                                    "reach_s": {k: v[0] for k, v in reach.items()}}, indent=1, default=str))


if __name__ == "__main__":
    main()
