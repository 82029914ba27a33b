"""The registered generator: an MLflow pyfunc "model from code" around the EMA U-Net.

The register stage logs this file as the model's code, the training checkpoint as its only
artifact and the ddpm package as bundled code: nothing is pickled. MLflow runs this file to
build the model; `load_context` rebuilds the EMA U-Net and its guide from the checkpoint
(ddpm.checkpoints.load_ema_weights) and `predict` samples with ddpm.sampling.generate, as the sample stage does.

Input: one row per request, columns `num_samples` (required), `sampler` ("ddpm", "ddim", "dpmpp_2m" or
"dpmpp_2m_sde"), `steps`, `seed`, `batch_size` (at most num_samples), and for a class-conditional model
`class` (every image of the row is of this label) and `guidance` (w). What a row leaves out comes
from the `sample` parameters the model was registered with (its model config), so a request with
only `num_samples` = sample.num_samples returns the sample stage's images. Output: uint8 images,
N x H x W x C, the rows' images in order. DDPM_DEVICE (default "auto") picks the device.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

MAX_SAMPLES = 4096  # per row: a request can not ask the server for unbounded memory


def _value(row: dict[str, Any], key: str, default: Any) -> Any:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return value


def request_config(row: dict[str, Any], defaults, timesteps: int, num_classes: int = 0):
    """One request row -> a validated SampleConfig; `defaults` (a SampleConfig) fills what the row leaves out.

    `num_classes`: the model's classes (0: unconditional, which takes neither `class` nor `guidance`).
    """
    from ddpm.config.groups import SampleConfig
    from ddpm.errors import ConfigError

    def bad(message: str) -> MlflowException:
        return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)

    if _value(row, "num_samples", None) is None:
        raise bad("num_samples is required: send e.g. {\"num_samples\": 16}")
    samplers = typing.get_args(typing.get_type_hints(SampleConfig)["sampler"])
    label, guidance = _value(row, "class", None), _value(row, "guidance", None)
    if not num_classes and (label is not None or guidance):
        key = "class" if label is not None else "guidance"
        raise bad(f"{key} = {row[key]!r} is not allowed: this model is unconditional (trained with "
                  f"model.num_classes = 0); leave {key} out")
    if label is not None and not _is_label(label, num_classes):
        raise bad(f"class = {label!r} is not one of the model's classes: "
                  f"ask for an integer from 0 to {num_classes - 1}")
    try:
        n = int(_value(row, "num_samples", 0))
        cfg = dataclasses.replace(
            defaults, num_samples=n, sampler=str(_value(row, "sampler", defaults.sampler)),
            steps=int(_value(row, "steps", defaults.steps)), seed=int(_value(row, "seed", defaults.seed)),
            batch_size=int(_value(row, "batch_size", min(n, defaults.batch_size)) or 1),
            classes=(int(label),) if label is not None else defaults.classes if num_classes else None,
            guidance=float(defaults.guidance if guidance is None else guidance),
            classifier_scale=0.0)  # not served: the noisy classifier of classifier guidance is no artifact here
        cfg.validate()
    except (TypeError, ValueError, ConfigError) as exc:
        raise bad(f"bad request {row}: {exc}") from None
    if cfg.sampler not in samplers:
        raise bad(f"sampler = {cfg.sampler!r} is not allowed: choose one of {', '.join(map(repr, samplers))}")
    if cfg.steps > timesteps:
        raise bad(f"steps = {cfg.steps} is more than the model's {timesteps} timesteps: ask for at most {timesteps}")
    if cfg.num_samples > MAX_SAMPLES:
        raise bad(f"num_samples = {cfg.num_samples} is too many for one request: ask for at most {MAX_SAMPLES}")
    return cfg


def _is_label(value: Any, num_classes: int) -> bool:
    """An integral number in 0..num_classes-1 (7.0 is 7: a column with missing cells arrives as floats)."""
    try:
        return float(value).is_integer() and 0 <= int(float(value)) < num_classes
    except (TypeError, ValueError):
        return False


class DDPMGenerator(PythonModel):
    def load_context(self, context) -> None:
        from ddpm.checkpoints import load_ema_weights
        from ddpm.config.groups import SampleConfig
        from ddpm.diffusion import GaussianDiffusion
        from ddpm.runtime import resolve_device

        self.device = resolve_device(os.environ.get("DDPM_DEVICE", "auto"))
        registered = (context.model_config or {}).get("sample")
        self.defaults = SampleConfig(**registered) if registered else SampleConfig()
        self.ema, self.guide, trained = load_ema_weights(context.artifacts["checkpoint"], self.device)
        self.diffusion = GaussianDiffusion.from_config(trained)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        from ddpm.sampling import generate

        if isinstance(model_input, pd.DataFrame):
            rows = model_input.to_dict("records")
        elif isinstance(model_input, dict):
            rows = [model_input]
        else:
            rows = list(model_input)
        if not rows:
            raise MlflowException("no request rows: send at least {\"num_samples\": 1}", INVALID_PARAMETER_VALUE)
        # every row is checked before any sampling
        configs = [request_config(row, self.defaults, self.diffusion.num_timesteps, self.ema.num_classes)
                   for row in rows]
        return np.concatenate([generate(self.ema, self.diffusion, cfg, guide=self.guide, device=self.device,
                                        progress=False) for cfg in configs])


set_model(DDPMGenerator())
