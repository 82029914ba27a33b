"""The served generator as `mlflow models serve` answers it: MLflow's own scoring app (scoring_server.init) over a
pyfunc model saved the way the register stage logs it, called in-process (no port, no network).

A tiny class-conditional checkpoint with autoguidance weights on a 1,000-step chain: every bound of a request
can be reached without sampling, because the tests that expect a refusal replace the sampler with one that fails.
"""

import dataclasses
import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest

import ddpm.sampling
from ddpm.checkpoints import save_checkpoint
from ddpm.config import Config
from ddpm.config.groups import SampleConfig
from ddpm.config.training import DataConfig, DiffusionConfig, ModelConfig, TrainConfig
from ddpm.data import load_splits
from ddpm.tracking.generator_model import MAX_NETWORK_CALLS, MAX_SAMPLES
from ddpm.tracking.mlflow_client import generator_signature
from ddpm.train import train

LIBRARY = Path(ddpm.__file__).parent
CFG = Config(
    data=DataConfig(limit=64),
    model=ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(), norm_groups=4, num_classes=10),
    diffusion=DiffusionConfig(timesteps=1000),
    train=TrainConfig(steps=2, batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=2, precision="fp32",
                      autoguide_at=0.5),
)
REGISTERED = dataclasses.replace(SampleConfig(), sampler="ddim", steps=4, batch_size=8, autoguidance=1.0)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    tmp = tmp_path_factory.mktemp("served")
    checkpoint = tmp / "checkpoint.pt"
    split = load_splits(CFG.data, seed=0).train
    save_checkpoint(checkpoint, train(CFG, split.images, labels=split.labels, progress=False).checkpoint)
    mlflow.pyfunc.save_model(tmp / "model", python_model=str(LIBRARY / "tracking" / "generator_model.py"),
                             artifacts={"checkpoint": str(checkpoint)}, signature=generator_signature((28, 28, 1)),
                             model_config={"sample": dataclasses.asdict(REGISTERED)})
    with TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(tmp / "model")))) as client:
        yield client


def post(app, rows) -> tuple[int, dict]:
    body = json.dumps({"dataframe_records": rows}, allow_nan=True)
    response = app.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    return response.status_code, response.json()


@pytest.fixture()
def no_sampling(monkeypatch):
    """A sampler that fails the test if a request that should be refused reaches it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a request that should have been refused was sampled")

    monkeypatch.setattr(ddpm.sampling, "generate", refuse)


def assert_one_line_refusal(status: int, body: dict, *needles: str) -> None:
    assert status == 400, body
    assert "stack_trace" not in body, body
    message = body["message"]
    assert "\n" not in message and "Traceback" not in message and len(message) < 400, message
    for needle in needles:
        assert needle in message, message


def test_a_small_request_samples_with_the_registered_defaults(app):
    status, body = post(app, [{"num_samples": 3, "class": 7}, {"num_samples": 2, "seed": 5, "guidance": 1.5}])
    assert status == 200, body
    images = np.asarray(body["predictions"])
    assert images.shape == (5, 28, 28, 1) and images.min() >= 0 and images.max() <= 255


@pytest.mark.parametrize("rows, needles", [
    # ddpm honours steps: 4,096 samples of 1,000 steps, autoguided, is 8.2M network calls
    ([{"num_samples": MAX_SAMPLES, "sampler": "ddpm", "steps": 1000}], ["network calls", f"{MAX_NETWORK_CALLS:,}"]),
    # each row is within bounds; the request is not
    ([{"num_samples": 3000, "steps": 4}, {"num_samples": 3000, "steps": 4}], [f"at most {MAX_SAMPLES}"]),
    ([{"num_samples": 2000, "steps": 100}, {"num_samples": 2000, "steps": 100}], ["network calls"]),
    ([{"num_samples": 2, "guidance": 1e308}], ["guidance = 1e+308"]),
    ([{"num_samples": 2, "guidance": math.inf}], ["guidance = inf"]),
    ([{"num_samples": 2, "guidance": "lots"}], ["guidance = 'lots'"]),
    ([{"num_samples": 2, "steps": 2.5}], ["steps = 2.5", "whole number"]),
    ([{"num_samples": "abc"}], ["num_samples = 'abc'"]),
    ([{"num_samples": True}], ["num_samples = True"]),
    ([{"num_samples": [1, 2]}], ["num_samples = [1, 2]"]),
    ([{"num_samples": 2, "seed": 2**70}], ["seed = 1180591620717411303424", "at most 9223372036854775807"]),
    ([{"num_samples": 2, "seed": -1}], ["seed = -1"]),
    ([{"num_samples": 2, "sampler": 7}], ["sampler = 7"]),
    ([{"num_samples": 2, "class": 12}], ["class = 12"]),
    ([{"num_samples": 2, "stepz": 3}], ["unknown request field 'stepz'", "did you mean 'steps'?"]),
    ([{"sampler": "ddim"}], ["num_samples is required"]),
])
def test_a_bad_or_too_large_request_is_a_one_line_400_before_any_sampling(app, no_sampling, rows, needles):
    assert_one_line_refusal(*post(app, rows), *needles)


def test_csv_and_columnar_requests_are_parsed_and_checked_too(app, monkeypatch):
    calls = []
    monkeypatch.setattr(ddpm.sampling, "generate",
                        lambda ema, diffusion, cfg, **kw: calls.append(cfg) or np.zeros((cfg.num_samples, 28, 28, 1)))
    response = app.post("/invocations", content="num_samples,steps\n2,3\n", headers={"Content-Type": "text/csv"})
    assert response.status_code == 200 and [(c.num_samples, c.steps) for c in calls] == [(2, 3)], response.text
    response = app.post("/invocations", content="num_samples\nabc\n", headers={"Content-Type": "text/csv"})
    assert_one_line_refusal(response.status_code, response.json(), "num_samples = 'abc'")
    for body in ({"inputs": {"num_samples": [1, 2], "steps": [3, 4]}},
                 {"instances": [{"num_samples": 1, "steps": 3}, {"num_samples": 2, "steps": 4}]}):
        calls.clear()
        response = app.post("/invocations", json=body)
        assert response.status_code == 200 and [(c.num_samples, c.steps) for c in calls] == [(1, 3), (2, 4)], \
            response.text


def test_a_failure_while_sampling_is_one_line_without_a_stack_trace(app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory\nwhile allocating 9 GiB")

    monkeypatch.setattr(ddpm.sampling, "generate", broken)
    status, body = post(app, [{"num_samples": 2}])
    assert status == 500 and "stack_trace" not in body, body
    assert "\n" not in body["message"] and "out of memory" in body["message"], body
