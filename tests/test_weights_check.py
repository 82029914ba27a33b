"""torch-fidelity's Inception weights (evaluate.inception_weights: torch-fidelity) are a download: their SHA-256 is
checked against the pinned one before torch.load reads a byte of them, wherever the file comes from."""

import pytest
import torch

from ddpm.errors import CheckpointError
from ddpm.evaluation import feature_spaces
from ddpm.evaluation.feature_spaces import TORCH_FIDELITY_SHA256, TorchFidelityInception, inception_space


@pytest.fixture()
def unread(monkeypatch):
    """torch.load, failing the test if the weights are read at all."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load read weights whose SHA-256 was not checked")

    monkeypatch.setattr(torch, "load", refuse)


def planted(path):
    """A file in the place and the format of the weights, with other bytes than the pinned ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, path)
    return path


def test_the_pin_is_the_sha256_the_download_is_named_by():
    assert TORCH_FIDELITY_SHA256.startswith("6726825d") and "6726825d" in feature_spaces.URL_INCEPTION_V3


def test_an_explicit_weights_file_of_other_bytes_is_refused_before_loading(tmp_path, unread):
    path = planted(tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    with pytest.raises(CheckpointError, match="have SHA-256 .* expected 6726825d0af5") as info:
        TorchFidelityInception(TorchFidelityInception.NAME, ["2048"], feature_extractor_weights_path=path)
    assert "\n" not in str(info.value) and "download" in str(info.value)


def test_the_cached_download_of_other_bytes_is_refused_by_the_feature_space(tmp_path, monkeypatch, unread):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    planted(tmp_path / "hub" / "checkpoints" / feature_spaces.URL_INCEPTION_V3.rsplit("/", 1)[-1])
    with pytest.raises(CheckpointError, match='expected 6726825d0af5.*"fid-helper"'):
        inception_space("torch-fidelity")
    with pytest.raises(CheckpointError, match="have SHA-256"):
        TorchFidelityInception(TorchFidelityInception.NAME, ["2048"])
