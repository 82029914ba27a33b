"""Training throughput: our U-Net + L_simple + AdamW step against diffusers and lucidrains.

Each peer is the tool a user would pick instead: diffusers' `UNet2DModel` + `DDPMScheduler`
and lucidrains' `denoising-diffusion-pytorch` `Unet` + `GaussianDiffusion`. All three run in
one process at matched parameter count (within 10%), input size, batch and precision; rounds
are interleaved so that load on the machine hits every model alike. Prints images/s per model
and our ratio to the faster peer, with the FLOPs of a training step (convolutions, matmuls and
attention, forward and backward, counted by `torch.utils.flop_counter`), the rate they run at,
and the model FLOP utilisation (MFU) against the device's datasheet peak where it is known and
against a large matmul measured on the same device. For the CIFAR-10 model it sets our steps/s
against the DDPM paper's 21 steps/s (batch 128, TPU v3-8) and projects 800k steps. `-S KEY=VALUE`
overrides the profile's parameters (the model's, say) as `dvc exp run -S` does.

    pip install -e '.[bench]'      # the peers; never part of the main install (make bench)
    python -m benchmarks.train_throughput --size default     # the default CPU profile's model, 28x28
    python -m benchmarks.train_throughput --size cifar10 --device cuda --precision bf16 --batch 128
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import harness
from ddpm.diffusion import GaussianDiffusion
from ddpm.train import build_optimizer
from ddpm.unet import UNet, count_parameters

PROFILES = {"default": "default", "cifar10": "cifar10-gpu"}  # --size -> the profile whose model it trains


# ---------------------------------------------------------------------------- the three contenders
# Each trains with the optimizer its own training code uses: ours is ddpm.train's fused AdamW;
# diffusers' examples/unconditional_image_generation/train_unconditional.py builds a default
# torch.optim.AdamW, lucidrains' Trainer a default torch.optim.Adam. --same-optimizer gives all
# three ours, which leaves the model, the loss and the autograd graph as the only differences.
OPTIMIZERS = {
    "ours": ("AdamW fused", lambda params: build_optimizer(params, lr=1e-4, weight_decay=0.0)),
    "diffusers": ("AdamW", lambda params: torch.optim.AdamW(params, lr=1e-4)),
    "lucidrains": ("Adam", lambda params: torch.optim.Adam(params, lr=1e-4)),
}


def ours(cfg, device):
    model = UNet(cfg.model, image_size=cfg.data.image_size, channels=cfg.data.channels).to(device)
    diffusion = GaussianDiffusion.from_config(cfg)
    return model, lambda x0: diffusion.training_loss(model, x0)


def diffusers_peer(cfg, device, width: int):
    from diffusers import DDPMScheduler

    model = harness.diffusers_unet(cfg, width, dropout=cfg.model.dropout).to(device)
    schedule = "squaredcos_cap_v2" if cfg.diffusion.schedule == "cosine" else "linear"
    scheduler = DDPMScheduler(num_train_timesteps=cfg.diffusion.timesteps, beta_schedule=schedule)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)

    def loss(x0):
        noise = torch.randn_like(x0)
        t = torch.randint(0, cfg.diffusion.timesteps, (x0.shape[0],), device=device)
        return F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)

    return model, loss


def lucidrains_peer(cfg, device, width: int):
    from denoising_diffusion_pytorch import GaussianDiffusion as LGaussianDiffusion

    model = harness.lucidrains_unet(cfg, width, dropout=cfg.model.dropout)
    schedule = "cosine" if cfg.diffusion.schedule == "cosine" else "linear"
    diffusion = LGaussianDiffusion(model, image_size=cfg.data.image_size, timesteps=cfg.diffusion.timesteps,
                                   objective="pred_noise", beta_schedule=schedule, auto_normalize=False).to(device)
    return model, diffusion


# ---------------------------------------------------------------------------- FLOPs and utilisation
# Ho et al. 2020, appendix B: the CIFAR-10 model trains at 21 steps/s at batch 128 on a TPU v3-8,
# 800k steps in about 10.6 hours.
PAPER_STEPS_PER_S, PAPER_BATCH, PAPER_STEPS = 21.0, 128, 800_000

# Dense (no sparsity) tensor-core peaks from NVIDIA's datasheets, TFLOP/s; fp32 matmuls run as TF32
# (the benchmark turns TF32 on). First matching name fragment wins.
DATASHEET_TFLOPS = [
    ("H100 PCIe", {"bf16": 756.0, "fp32": 378.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 418.0}),
    ("H100", {"bf16": 989.4, "fp32": 494.7}),
    ("H200", {"bf16": 989.4, "fp32": 494.7}),
    ("A100", {"bf16": 312.0, "fp32": 156.0}),
]


def train_flops_per_image(model: torch.nn.Module, loss_fn, x0: torch.Tensor) -> float:
    """Convolution, matmul and attention FLOPs of one forward + backward, per image.

    Attention runs on the math backend while counting, so that its two matmuls are counted
    on every device (the fused CPU kernel has no FLOP formula); they are the same FLOPs the
    fused kernels do, less the backward recomputation of flash attention.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = x0[:2]
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss_fn(x).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0]


def datasheet_tflops(device: torch.device, precision: str) -> tuple[float, str] | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in DATASHEET_TFLOPS:
        if fragment in name:
            return peaks[precision], name
    return None


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """The rate of a large square matmul on this device: the practical ceiling for MFU."""
    n, reps = (8192, 20) if device.type == "cuda" else (2048, 5)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    return 2 * n**3 * reps / harness.elapsed(lambda: a @ b, reps, device) / 1e12


# ---------------------------------------------------------------------------- the step
def make_step(model: torch.nn.Module, loss_fn, x0: torch.Tensor, dtype, optimizer: str = "ours"):
    opt = OPTIMIZERS[optimizer][1](model.parameters())
    device = x0.device

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--size", choices=sorted(PROFILES), default="default")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile every model")
    ap.add_argument("--same-optimizer", action="store_true",
                    help="train all three with our fused AdamW instead of each tool's own optimizer")
    harness.add_overrides(ap)
    args = ap.parse_args()
    harness.require_peers(("diffusers", "lucidrains"))
    results = harness.Results(Path(__file__).stem, args, args.device)

    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    cfg = harness.config(PROFILES[args.size], args.overrides)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    x0 = torch.randn(args.batch, cfg.data.channels, cfg.data.image_size, cfg.data.image_size, device=device)

    our_model, our_loss = ours(cfg, device)
    target = count_parameters(our_model)
    contenders = {"ours": (our_model, our_loss)}
    w, _ = harness.matched(lambda w: diffusers_peer(cfg, "cpu", w)[0], target)
    contenders["diffusers"] = diffusers_peer(cfg, device, w)
    w, _ = harness.matched(lambda w: lucidrains_peer(cfg, "cpu", w)[0], target)
    model, diffusion = lucidrains_peer(cfg, device, w)
    contenders["lucidrains"] = (model, diffusion)

    steps, flops, optimizers = {}, {}, {}
    for name, (model, loss_fn) in contenders.items():
        n = count_parameters(model)
        if abs(n - target) > 0.1 * target:
            print(f"warning: {name} has {n / 1e6:.2f}M parameters, more than 10% from ours ({target / 1e6:.2f}M)")
        flops[name] = train_flops_per_image(model, loss_fn, x0)
        fn = torch.compile(loss_fn) if args.compile else loss_fn
        optimizers[name] = "ours" if args.same_optimizer else name
        steps[name] = make_step(model, fn, x0, dtype, optimizers[name])
        for _ in range(3):  # warm-up (and compilation)
            steps[name]()

    rates = {name: [] for name in steps}
    for _, name in harness.rounds(steps, args.rounds):  # interleaved, order alternating: load hits all alike
        rates[name].append(args.steps * args.batch / harness.elapsed(steps[name], args.steps, device))

    def achieved(name: str) -> float:  # TFLOP/s
        return statistics.median(rates[name]) * flops[name] / 1e12

    print(f"\ntraining throughput: {args.size} model, {cfg.data.image_size}x{cfg.data.image_size}x{cfg.data.channels}, "
          f"batch {args.batch}, {args.precision}, {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, "
          f"{'our optimizer for all' if args.same_optimizer else 'each tool with its own optimizer'}")
    print(f"{'model':<12} {'params':>9} {'optimizer':>12} {'GFLOP/image':>12} {'images/s':>9} {'TFLOP/s':>8}  "
          "rounds (images/s)")
    medians = {}
    for name, (model, _) in contenders.items():
        medians[name] = statistics.median(rates[name])
        print(f"{name:<12} {count_parameters(model) / 1e6:>8.3f}M {OPTIMIZERS[optimizers[name]][0]:>12} "
              f"{flops[name] / 1e9:>12.3f} {medians[name]:>9.4g} "
              f"{achieved(name):>8.3f}  " + " ".join(f"{r:.4g}" for r in rates[name]))
        results.add(row="model", model=name, parameters=count_parameters(model),
                    optimizer=OPTIMIZERS[optimizers[name]][0], gflop_per_image=flops[name] / 1e9,
                    images_per_s=medians[name], tflop_s=achieved(name), rounds_images_per_s=rates[name])
    peer = max(("diffusers", "lucidrains"), key=medians.get)
    print(f"ours / fastest peer ({peer}): {medians['ours'] / medians[peer]:.2f}x")
    paired = harness.paired(rates["ours"], rates[peer])  # round by round: what load hit both
    by_round = harness.spread(paired)
    if "q1" in by_round:
        print(f"  paired by round: median {by_round['median']:.3f}x, interquartile {by_round['q1']:.3f}-"
              f"{by_round['q3']:.3f}, ours faster in {sum(r > 1 for r in paired)} of {len(paired)} rounds")

    matmul = measured_matmul_tflops(device, dtype or torch.float32)
    sheet = datasheet_tflops(device, args.precision)
    print("\nutilisation (matmul/conv/attention FLOPs of forward + backward; optimizer and elementwise not counted)")
    print(f"  measured {args.precision} matmul on this device: {matmul:.3f} TFLOP/s; "
          f"ours reaches {achieved('ours') / matmul:.1%} of it")
    if sheet:
        print(f"  datasheet peak ({sheet[1]}, {args.precision}, dense): {sheet[0]:.1f} TFLOP/s; "
              f"MFU of ours {achieved('ours') / sheet[0]:.1%}")

    steps_per_s = medians["ours"] / args.batch
    print(f"\nours: {steps_per_s:.2f} steps/s at batch {args.batch} -> {PAPER_STEPS // 1000}k steps in "
          f"{PAPER_STEPS / steps_per_s / 3600:.1f} h")
    results.add(row="ours / fastest peer", fastest_peer=peer, ratio=medians["ours"] / medians[peer],
                paired_by_round=by_round, matmul_tflop_s=matmul, share_of_matmul=achieved("ours") / matmul,
                datasheet_tflop_s=sheet[0] if sheet else None, mfu=achieved("ours") / sheet[0] if sheet else None,
                steps_per_s=steps_per_s, hours_for_800k_steps=PAPER_STEPS / steps_per_s / 3600)
    if args.size == "cifar10":
        print(f"  DDPM paper (TPU v3-8): {PAPER_STEPS_PER_S:.0f} steps/s at batch {PAPER_BATCH} -> "
              f"{PAPER_STEPS // 1000}k steps in {PAPER_STEPS / PAPER_STEPS_PER_S / 3600:.1f} h "
              f"({PAPER_STEPS_PER_S * PAPER_BATCH * flops['ours'] / 1e12:.1f} TFLOP/s of this model's FLOPs)"
              + ("" if args.batch == PAPER_BATCH else f"; compare at --batch {PAPER_BATCH}"))


if __name__ == "__main__":
    main()
