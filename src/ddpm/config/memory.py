"""Whether a configuration's batches can fit: a lower bound on the bytes each needs, against the memory there is.

A batch far too large for memory used to end in a stage's allocation failing (a traceback, or the kernel's OOM
killer after minutes of swapping). Each bound below counts only the largest tensors a batch cannot do without
(measured on the profiles' U-Nets, training holds 5 to 15 times the activations counted here), so a refusal
means the batch cannot run, never that it might not. pipeline.stage checks it before a stage allocates or writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ddpm.config import Config
from ddpm.errors import ConfigError

FLOAT = 4  # bytes: fp32 activations, weights and optimizer state
INCEPTION_FLOATS = (32 + 64) * 147 * 147  # Inception-v3's widest consecutive pair of activations, per image
TRAINING_STATE = 5  # weights, gradients, AdamW's two moments, the EMA


@dataclass(frozen=True)
class Need:
    key: str
    value: int
    required: int  # bytes, in proportion to the value unless `fix` says otherwise
    what: str
    on_device: bool = True  # False: host memory (arrays the stage keeps)
    fix: str = ""  # how to lower it, when not "lower KEY to at most N"


def level_floats(base: int, mult: tuple[int, ...], blocks: int, size: int) -> int:
    """Per image: sum over the levels of (channels x resolution^2) x residual blocks."""
    return sum(blocks * base * m * (size // 2**level) ** 2 for level, m in enumerate(mult))


def needs(cfg: Config, world_size: int = 1) -> list[Need]:
    """Every network's weights first (the cause when a width is absurd), then the batches."""
    m, size, pixels = cfg.model, cfg.data.image_size, cfg.data.image_size ** 2 * cfg.data.channels
    nc, width = cfg.noisy_classifier, cfg.classifier.width
    noisy_classifier = bool(cfg.sample.classifier_scale or cfg.sweep.classifier_scales)  # trained only then
    # 3x3 convolutions of c -> c channels, two per residual block: the encoder's num_res_blocks and the decoder's
    # num_res_blocks + 1 per level; the domain classifier's three blocks end in a conv at width, 2 and 4 width
    unet_weights = sum(18 * (m.base_channels * k) ** 2 for k in m.channel_mult) * (2 * m.num_res_blocks + 1)
    encoder_weights = sum(18 * (nc.base_channels * k) ** 2 for k in nc.channel_mult) * nc.num_res_blocks
    weights = [
        Need("model.base_channels", m.base_channels, unet_weights * FLOAT * TRAINING_STATE,
             "the U-Net's weights and their training state", fix="lower model.base_channels or model.channel_mult"),
        Need("model.num_classes", m.num_classes, (m.num_classes + 1) * 4 * m.base_channels * FLOAT * TRAINING_STATE,
             "the class embedding and its training state", fix="set model.num_classes to the data's classes"),
        Need("classifier.width", width, 9 * 21 * width**2 * FLOAT * (TRAINING_STATE - 1),
             "the domain classifier's weights and their training state", fix="lower classifier.width"),
    ]
    if noisy_classifier:
        weights.append(Need("noisy_classifier.base_channels", nc.base_channels,
                            encoder_weights * FLOAT * (TRAINING_STATE - 1),
                            "the noisy classifier's weights and their training state",
                            fix="lower noisy_classifier.base_channels or noisy_classifier.channel_mult"))

    # training keeps at least 4 tensors per residual block (norm, activation and conv inputs, the skip);
    # sampling keeps the encoder's skips for the decoder
    train_image = 4 * level_floats(m.base_channels, m.channel_mult, 2 * m.num_res_blocks + 1, size) * FLOAT
    sample_image = level_floats(m.base_channels, m.channel_mult, m.num_res_blocks, size) * FLOAT
    tc, sc, sw = cfg.train, cfg.sample, cfg.sweep
    batches = [
        Need("train.batch_size", tc.batch_size, tc.batch_size * train_image // world_size,
             "the U-Net's activations in training" + (f" (one of {world_size} processes)" if world_size > 1 else "")),
        Need("train.eval_samples", tc.eval_samples, tc.eval_samples * sample_image, "the quality probe's one batch"),
        Need("sample.batch_size", sc.batch_size, sc.batch_size * sample_image, "the U-Net's activations in sampling"),
        Need("sweep.batch_size", sw.batch_size, sw.batch_size * sample_image, "the U-Net's activations in sampling"),
        Need("sample.num_samples", sc.num_samples, sc.num_samples * pixels, "the samples as uint8", on_device=False),
        Need("sweep.num_samples", sw.num_samples, sw.num_samples * pixels, "a sweep row's samples", on_device=False),
        Need("classifier.batch_size", cfg.classifier.batch_size,
             cfg.classifier.batch_size * 2 * width * size**2 * FLOAT,
             "the domain classifier's activations in training"),
    ]
    if "inception" in cfg.evaluate.spaces:
        batches.append(Need("evaluate.batch_size", cfg.evaluate.batch_size,
                            cfg.evaluate.batch_size * INCEPTION_FLOATS * FLOAT, "Inception-v3's activations"))
    if noisy_classifier:
        encoder_image = 2 * level_floats(nc.base_channels, nc.channel_mult, nc.num_res_blocks, size) * FLOAT
        batches.append(Need("noisy_classifier.batch_size", nc.batch_size, nc.batch_size * encoder_image,
                            "the noisy classifier's activations in training"))
    return weights + batches


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(cfg: Config, device_bytes: int, host_bytes: int, device_name: str, world_size: int = 1) -> None:
    """ConfigError naming the first key whose lower bound exceeds the memory it would use."""
    for need in needs(cfg, world_size):
        available, where = (device_bytes, device_name) if need.on_device else (host_bytes, "CPU memory")
        if need.required > available:
            most = max(1, math.floor(need.value * available / need.required))
            fix = need.fix or f"lower {need.key} to at most {most}"
            raise ConfigError(f"{need.key} = {need.value} needs at least {gib(need.required)} for {need.what}, "
                              f"more than the {gib(available)} of {where}: {fix}")
