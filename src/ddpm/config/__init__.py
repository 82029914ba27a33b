"""params.yaml -> frozen, typed, validated configuration: the groups together and the rules across them.

Every knob of the pipeline lives in one of the dataclasses of ddpm.config.training and ddpm.config.groups; their defaults
are the default profile (the one `params.yaml` holds). `load_config` rejects unknown keys and
out-of-range values with a `ConfigError` whose message names the key and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpm.config.groups import (
    ClassifierConfig,
    EvaluateConfig,
    NoisyClassifierConfig,
    RuntimeConfig,
    SampleConfig,
    SweepConfig,
    TrackingConfig,
)
from ddpm.config.parsing import build, check_seed, plain, read_mapping
from ddpm.config.training import DataConfig, DiffusionConfig, ModelConfig, TrainConfig
from ddpm.errors import ConfigError

# Training keys added after checkpoints were made, with the value that every run before them had: at that
# value a key stays out of training_dict, so an older checkpoint's record (and its snapshots' run identity) is
# what such a run writes today, and a record without the key reads as that value, whatever the default.
LATER_KEYS = {("model", "learn_sigma"): False, ("model", "scale_shift_norm"): False, ("train", "loss"): "simple",
              ("train", "importance_sampling"): False, ("train", "accumulate"): 1,
              ("train", "activation_checkpointing"): False}


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    noisy_classifier: NoisyClassifierConfig = field(default_factory=NoisyClassifierConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        check_seed("seed", self.seed)
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

        if self.sample.classifier_scale or self.sweep.classifier_scales:  # the noisy classifier will be trained
            self._check_noisy_classifier()

        gate_space = self.tracking.champion_metric.partition(".")[0]
        if gate_space not in self.evaluate.spaces:
            raise ConfigError(
                f"tracking.champion_metric = {self.tracking.champion_metric!r} needs the {gate_space} feature space, "
                f"which evaluate.spaces = {list(self.evaluate.spaces)} does not compute: add it there or choose "
                f"a metric of {' / '.join(self.evaluate.spaces)}"
            )

        timesteps = self.diffusion.timesteps
        sampled = {"sample.steps": [self.sample.steps],
                   "train.eval_steps": [self.train.eval_steps], "sweep.steps": list(self.sweep.steps)}
        for key, steps in sampled.items():
            if any(s > timesteps for s in steps):
                value = steps[0] if len(steps) == 1 else steps
                raise ConfigError(f"{key} = {value} is more than diffusion.timesteps = {timesteps}: a sampler "
                                  f"visits each timestep at most once; use at most {timesteps}")

        if self.train.loss != "simple" and not self.model.learn_sigma:
            raise ConfigError(f"train.loss = {self.train.loss} trains the reverse variance, which the model does not "
                              "have: set model.learn_sigma: true, or train.loss: simple")
        self.sample.check_conditioning(self.model.num_classes)
        if self.sample.guidance and not self.train.cond_drop:
            raise ConfigError(f"sample.guidance = {self.sample.guidance} extrapolates away from the unconditional "
                              "model, which train.cond_drop = 0 never trains: set train.cond_drop: 0.1")
        if self.sample.autoguidance and self.train.autoguide_at is None:
            raise ConfigError(f"sample.autoguidance = {self.sample.autoguidance} guides with the earlier EMA weights "
                              "that train.autoguide_at keeps, and it is null: set train.autoguide_at: 0.33, "
                              "or sample.autoguidance: 0")
        if self.model.num_classes and any(self.sweep.guidance) and not self.train.cond_drop:
            raise ConfigError(f"sweep.guidance = {list(self.sweep.guidance)} guides with the unconditional model, "
                              "which train.cond_drop = 0 never trains: set train.cond_drop: 0.1, "
                              "or sweep.guidance: []")

        n, ev = self.sample.num_samples, self.evaluate
        if n < ev.kid_subset_size or n <= ev.pr_k:
            raise ConfigError(
                f"sample.num_samples = {n} is too few for evaluate.kid_subset_size = {ev.kid_subset_size} and "
                f"evaluate.pr_k = {ev.pr_k}: raise sample.num_samples or lower those two"
            )
        if self.sample.grid_size > n:  # the sample stage's grid would show fewer samples than it says
            raise ConfigError(f"sample.grid_size = {self.sample.grid_size} is more than sample.num_samples = {n}: "
                              f"show at most {n}")

    def _check_noisy_classifier(self) -> None:
        nc, size = self.noisy_classifier, self.data.image_size
        levels = len(nc.channel_mult) - 1
        if size % (2**levels):
            raise ConfigError(f"noisy_classifier.channel_mult has {levels + 1} levels, which cannot halve data.image_size"
                              f" = {size} {levels} times: use fewer levels or a size divisible by {2**levels}")
        resolutions = {size // 2**i for i in range(levels + 1)}
        if not set(nc.attention_resolutions) <= resolutions:
            raise ConfigError(f"noisy_classifier.attention_resolutions contains "
                              f"{min(set(nc.attention_resolutions) - resolutions)}, which is not a resolution of the "
                              f"classifier for image_size {size}: choose from {sorted(resolutions)}")

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    def training_dict(self) -> dict[str, Any]:
        """The parameters a trained model depends on (what its checkpoint records)."""
        full = self.to_dict()
        record = {k: full[k] for k in ("seed", "data", "model", "diffusion", "train")}
        if not self.model.num_classes:  # unconditional: the record, and so the checkpoint's bytes, from before classes
            del record["model"]["num_classes"], record["train"]["cond_drop"]
        for (group, key), before in LATER_KEYS.items():
            if record[group][key] == before:
                del record[group][key]
        return record


def config_from_dict(raw: dict[str, Any] | None) -> Config:
    """Build and validate a Config; unknown keys and wrong types raise ConfigError."""
    config = build(Config, raw or {}, prefix="")
    config.validate()
    return config


def config_from_checkpoint(record: dict[str, Any]) -> Config:
    """The Config of a checkpoint's training record (Config.training_dict()): the groups it lacks take their
    defaults, except these. A record without model.num_classes is an unconditional model's (training_dict drops
    it at 0), and one without a LATER_KEYS key has that key's earlier value, whatever the default. sample.autoguidance is off for a run that kept no guide
    (train.autoguide_at: null), where the default weight would ask for weights the checkpoint does not have."""
    autoguide_at = record.get("train", {}).get("autoguide_at", TrainConfig().autoguide_at)
    record = {**record, "model": {"num_classes": 0, **record.get("model", {})}}
    for (group, key), before in LATER_KEYS.items():
        record[group] = {key: before, **record.get(group, {})}
    return config_from_dict({**record,
                             "sample": {} if autoguide_at is not None else {"autoguidance": 0.0}})


def load_config(path: str | Path = "params.yaml") -> Config:
    return config_from_dict(read_mapping(path))
