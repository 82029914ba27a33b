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

A request is bounded as a whole: at most MAX_SAMPLES images and MAX_NETWORK_CALLS U-Net evaluations over
all its rows (images x steps x networks; `ddpm` takes `steps` on its respaced chain). Every value is
checked for type and range before any sampling; a refusal, or a failure while sampling, is one line
(RequestError), never a stack trace.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import typing
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from ddpm.tracking.names import REQUEST_FIELDS

log = logging.getLogger(__name__)
MAX_SAMPLES = 4096  # images per request, all rows together: the answer is held in memory
# U-Net evaluations of one image per request, all rows together: what bounds the compute. 409,600 is the largest
# request of the default model's sampler (4,096 images, 50 steps, autoguided: two networks per step).
MAX_NETWORK_CALLS = 500_000
MAX_GUIDANCE = 100.0  # w beyond this only amplifies the difference of two predictions into overflow
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed


class RequestError(MlflowException):
    """A refused request as one line: HTTP 400 (INVALID_PARAMETER_VALUE) or 500 (INTERNAL_ERROR).

    MLflow's scoring server rewrites `message` into "Failed to predict data '<the whole request DataFrame>'.
    Error: ..." over several lines before it answers; what it sends is serialize_as_json's, so the line
    written here is what the client reads.
    """

    def __init__(self, line: str, error_code: int = INVALID_PARAMETER_VALUE):
        super().__init__(line, error_code=error_code)
        self.line = line

    def serialize_as_json(self) -> str:
        return json.dumps({"error_code": self.error_code, "message": self.line})


def _shown(value: Any) -> str:
    return repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."


def _plain(row: dict[str, Any], key: str) -> Any:
    """The row's value as a Python object; None when missing (a JSON null, or the NaN pandas fills in where
    one row of several leaves a column out)."""
    value = row.get(key)
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(row: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = _plain(row, key)
    if value is None:
        return default
    if not (_is_number(value) and math.isfinite(value) and float(value).is_integer()):
        raise RequestError(f"{key} = {_shown(value)} is not a whole number: send an integer from {low} to {high}")
    if not low <= int(value) <= high:
        raise RequestError(f"{key} = {int(value)} is out of range: ask for at least {low} and at most {high}")
    return int(value)


def request_config(row: dict[str, Any], defaults, timesteps: int, num_classes: int = 0):
    """One request row -> a checked SampleConfig; `defaults` (a SampleConfig) fills what the row leaves out.

    Every value is checked for its type and range here, in one line naming the field, so that nothing a
    client sends reaches the sampler as an exception. `num_classes`: the model's classes (0: unconditional,
    which takes neither `class` nor `guidance`).
    """
    import dataclasses

    from ddpm.config.groups import SampleConfig
    from ddpm.errors import ConfigError

    if not isinstance(row, dict):
        raise RequestError(f"request row {_shown(row)} is not an object: send rows like {{\"num_samples\": 4}}")
    unknown = [key for key in row if key not in REQUEST_FIELDS and _plain(row, key) is not None]
    if unknown:
        near = difflib.get_close_matches(str(unknown[0]), REQUEST_FIELDS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise RequestError(f"unknown request field {_shown(unknown[0])}: {hint}send only {', '.join(REQUEST_FIELDS)}")
    if _plain(row, "num_samples") is None:
        raise RequestError("num_samples is required: send e.g. {\"num_samples\": 16}")
    label, guidance = _plain(row, "class"), _plain(row, "guidance")
    if not num_classes and (label is not None or guidance):
        key = "class" if label is not None else "guidance"
        raise RequestError(f"{key} = {_shown(row[key])} is not allowed: this model is unconditional (trained with "
                           f"model.num_classes = 0); leave {key} out")
    if label is not None and not _is_label(label, num_classes):
        raise RequestError(f"class = {_shown(label)} is not one of the model's classes: "
                           f"ask for an integer from 0 to {num_classes - 1}")
    if guidance is not None and not (_is_number(guidance) and math.isfinite(guidance)
                                     and 0 <= guidance <= MAX_GUIDANCE):
        raise RequestError(f"guidance = {_shown(guidance)} is out of range: send a number from 0 "
                           f"(no guidance) to {MAX_GUIDANCE:g}")
    samplers = typing.get_args(typing.get_type_hints(SampleConfig)["sampler"])
    sampler = _plain(row, "sampler")
    if sampler is not None and sampler not in samplers:
        raise RequestError(f"sampler = {_shown(sampler)} is not allowed: choose one of "
                           f"{', '.join(map(repr, samplers))}")
    n = _whole(row, "num_samples", 0, 1, MAX_SAMPLES)
    cfg = dataclasses.replace(
        defaults, num_samples=n, sampler=sampler or defaults.sampler,
        steps=_whole(row, "steps", defaults.steps, 1, timesteps),
        seed=_whole(row, "seed", defaults.seed, 0, MAX_SEED),
        batch_size=_whole(row, "batch_size", min(n, defaults.batch_size), 1, MAX_SAMPLES),
        grid_size=min(n, defaults.grid_size),  # the sample stage's report grid: no part of an answer
        classes=(int(label),) if label is not None else defaults.classes if num_classes else None,
        guidance=float(defaults.guidance if guidance is None else guidance),
        classifier_scale=0.0)  # not served: the noisy classifier of classifier guidance is no artifact here
    try:
        cfg.validate()
    except ConfigError as exc:
        raise RequestError(f"bad request: {exc}") from None
    return cfg


def network_calls(cfg, autoguided: bool, conditional: bool) -> int:
    """U-Net evaluations of one image that sampling `cfg` costs: one per step and image (every sampler, ddpm
    on its respaced chain of cfg.steps), twice with autoguidance (the guide too), twice again with
    classifier-free guidance (the null-class rows)."""
    networks = (2 if autoguided and cfg.autoguidance else 1) * (2 if conditional and cfg.guidance else 1)
    return cfg.num_samples * cfg.steps * networks


def _is_label(value: Any, num_classes: int) -> bool:
    """An integral number in 0..num_classes-1 (7.0 is 7: a column with missing cells arrives as floats)."""
    return _is_number(value) and math.isfinite(value) and float(value).is_integer() \
        and 0 <= int(value) < num_classes


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
        from ddpm.errors import UserError
        from ddpm.sampling import generate

        if isinstance(model_input, pd.DataFrame):
            rows = model_input.to_dict("records")
        elif isinstance(model_input, dict):  # {"inputs": ...} and {"instances": ...} arrive as columns
            try:
                rows = pd.DataFrame({key: np.atleast_1d(np.asarray(value, dtype=object))
                                     for key, value in model_input.items()}).to_dict("records")
            except ValueError:
                raise RequestError("request columns of different lengths or shapes: send one value per row in "
                                   "each, or one object per row (dataframe_records)") from None
        else:
            rows = list(model_input)
        if not rows:
            raise RequestError("no request rows: send at least {\"num_samples\": 1}")
        # every row, and the request as a whole, is checked before any sampling
        configs = [request_config(row, self.defaults, self.diffusion.num_timesteps, self.ema.num_classes)
                   for row in rows]
        total = sum(cfg.num_samples for cfg in configs)
        if total > MAX_SAMPLES:
            raise RequestError(f"{total} images in one request ({len(rows)} rows) are too many: ask for at most "
                               f"{MAX_SAMPLES} in all, over several requests if need be")
        calls = sum(network_calls(cfg, self.guide is not None, bool(self.ema.num_classes)) for cfg in configs)
        if calls > MAX_NETWORK_CALLS:
            raise RequestError(f"this request takes {calls:,} network calls (images x steps x networks, all rows), "
                               f"more than the {MAX_NETWORK_CALLS:,} one request may take: ask for fewer images "
                               "or steps")
        try:
            return np.concatenate([generate(self.ema, self.diffusion, cfg, guide=self.guide, device=self.device,
                                            progress=False) for cfg in configs])
        except UserError as exc:  # the model cannot answer this request, e.g. it samples NaN at this guidance
            raise RequestError(f"cannot sample this request: {exc}") from None
        except Exception as exc:  # the trace goes to the server's log, one line to the client
            log.exception("sampling failed")
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise RequestError(f"sampling failed ({exc.__class__.__name__}: {first}): see the server's log",
                               INTERNAL_ERROR) from None


set_model(DDPMGenerator())
