"""Evaluation in each feature space: FID, KID, precision/recall, the data floor; class coverage.

The Inception space adds sFID (on its spatial features) and the Inception Score (from its
logits, where the weights have the classifier layer; else null, with the reason). The
held-out images' features (the reference) are computed once; each evaluation extracts
only the samples' features. Every number carries its feature space and its N. The data floor
is the same metric between real training images and the held-out split at the same N: the
best score any generator can expect at that sample count (for the Inception Score, which
looks at one set, the score of those real training images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import softmax

from ddpm.config.groups import EvaluateConfig
from ddpm.errors import DataError
from ddpm.evaluation.feature_spaces import NO_LOGITS, FeatureSpace, extract
from ddpm.evaluation.metrics import (
    GaussianStats,
    class_coverage,
    confident_share,
    frechet_distance,
    gaussian_stats,
    inception_score,
    kid,
    precision_recall,
)
from ddpm.io import save_npz
from ddpm.runtime import Distributed


def check_samples(samples: np.ndarray, image_shape: tuple[int, ...]) -> None:
    """Samples must be uint8 (N, H, W, C) images of the data's shape."""
    if samples.ndim != 4:
        raise DataError(f"samples have shape {samples.shape}, expected (N, H, W, C) images: re-run sample")
    if samples.dtype != np.uint8:
        finite = np.isfinite(samples).all()
        bad = f"values in [{samples.min():.3g}, {samples.max():.3g}]" if finite else "NaN or inf"
        raise DataError(f"samples are {samples.dtype} with {bad}, expected uint8 in [0, 255]: re-run sample "
                        "(a diverged checkpoint gives NaN: retrain with a lower train.lr)")
    if samples.shape[1:] != tuple(image_shape):
        raise DataError(f"samples are {samples.shape[1:]} (H, W, C) but the data is {tuple(image_shape)}: "
                        "re-run train and sample after changing data parameters")
    if len(samples) < 2:
        raise DataError(f"{len(samples)} sample(s) cannot give a covariance: set sample.num_samples >= 2")


@dataclass
class Reference:
    """Real-image features in one space: the held-out split and the floor's training images; with
    evaluate.train_statistics also the Gaussian statistics of the whole training set (the papers' protocol).

    Features are saved as float32, which loses nothing (every extractor computes in float32), loaded as
    float64; the statistics are saved as computed, in float64."""

    space: str
    weights: str  # which network/weights produced them (the report names it)
    test: dict[str, np.ndarray]
    floor: dict[str, np.ndarray]
    train: dict[str, GaussianStats] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        arrays = ({f"test__{k}": v.astype(np.float32) for k, v in self.test.items()}
                  | {f"floor__{k}": v.astype(np.float32) for k, v in self.floor.items()}
                  | {f"train_{part}__{k}": np.asarray(getattr(stats, part)) for k, stats in self.train.items()
                     for part in ("mu", "sigma", "n")})
        save_npz(path, space=np.array(self.space), weights=np.array(self.weights), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path} not found: run the reference stage first (dvc repro reference)")
        with np.load(path) as z:
            split = {"test": {}, "floor": {}, "train_mu": {}, "train_sigma": {}, "train_n": {}}
            for key in z.files:
                if "__" in key:
                    part, name = key.split("__", 1)
                    split[part][name] = z[key] if part == "train_n" else z[key].astype(np.float64)
            train = {k: GaussianStats(mu, split["train_sigma"][k], int(split["train_n"][k]))
                     for k, mu in split["train_mu"].items()}
            return cls(str(z["space"]), str(z["weights"]), split["test"], split["floor"], train)


def compute_reference(space: FeatureSpace, test_images: np.ndarray, floor_images: np.ndarray, *,
                      train_images: np.ndarray | None = None, device: str = "cpu", batch_size: int = 50,
                      progress: bool = False, processes: Distributed = Distributed()) -> Reference:
    """The held-out and floor images' features; with `train_images`, the statistics of those too (of the
    features FID and sFID compare)."""
    settings = {"device": device, "batch_size": batch_size, "progress": progress, "processes": processes}
    train = {}
    if train_images is not None:
        feats = extract(space, train_images, **settings)
        train = {k: gaussian_stats(feats[k]) for k in (space.primary, "spatial") if k in feats}
    return Reference(space.name, space.weights_label, extract(space, test_images, **settings),
                     extract(space, floor_images, **settings), train)


def compare(generated: np.ndarray, real: np.ndarray, cfg: EvaluateConfig, seed: int = 0) -> dict[str, float]:
    """FID, KID (mean, std) and precision/recall of one feature set against another."""
    kid_mean, kid_std = kid(generated, real, cfg.kid_subset_size, cfg.kid_subsets, seed)
    precision, recall = precision_recall(generated, real, cfg.pr_k)
    return {"fid": frechet_distance(gaussian_stats(generated), gaussian_stats(real)),
            "kid_mean": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall}


def evaluate_space(generated: dict[str, np.ndarray], ref: Reference, feature: str, cfg: EvaluateConfig,
                   seed: int = 0) -> dict:
    """Metrics of the samples against the held-out split, with the data floor at the same N; in the
    Inception space also sFID and the Inception Score (`inception_metrics`)."""
    samples, test, floor = generated[feature], ref.test[feature], ref.floor[feature]
    n_floor = min(len(samples), len(floor))
    mine, at_floor = inception_metrics(generated, ref, n_floor, seed)
    return {
        "weights": ref.weights, "n_samples": len(samples), "n_reference": len(test),
        **compare(samples, test, cfg, seed), **mine,
        "floor": {"n_samples": n_floor, **compare(floor[:n_floor], test, cfg, seed), **at_floor},
        **({"train": against_train(generated, ref, feature)} if ref.train else {}),
    }


def against_train(generated: dict[str, np.ndarray], ref: Reference, feature: str) -> dict:
    """FID (and sFID where the space has spatial features) of the samples against the training set's
    statistics: the protocol papers report, with all N samples (50,000 in the literature) and no floor."""
    out = {"n_samples": len(generated[feature]), "n_reference": ref.train[feature].n,
           "fid": frechet_distance(gaussian_stats(generated[feature]), ref.train[feature])}
    if "spatial" in ref.train and "spatial" in generated:
        out["sfid"] = frechet_distance(gaussian_stats(generated["spatial"]), ref.train["spatial"])
    return out


INCEPTION = "inception"  # the one space whose "logits" are Inception's ImageNet classifier's (IS needs those)


def inception_metrics(generated: dict[str, np.ndarray], ref: Reference, n_floor: int, seed: int = 0) -> tuple[dict, dict]:
    """sFID where the space has "spatial" features, the Inception Score (mean, std, splits) in the Inception
    space: of the samples, and of the floor's first `n_floor` real images (the floor). Without the classifier
    layer the Inception Score is None, with the reason in `inception_score_unavailable`."""
    mine: dict = {}
    at_floor: dict = {}
    for name in ("spatial", "logits") if ref.space == INCEPTION else ("spatial",):
        if (name in generated) != (name in ref.test and name in ref.floor):  # a reference from older code
            which = "the samples have" if name in generated else "the reference has"
            raise DataError(f'{which} "{name}" features in the {ref.space} space and the other has none: re-run '
                            "the reference stage (dvc repro reference)")
    if "spatial" in generated:
        test = gaussian_stats(ref.test["spatial"])
        mine["sfid"] = frechet_distance(gaussian_stats(generated["spatial"]), test)
        at_floor["sfid"] = frechet_distance(gaussian_stats(ref.floor["spatial"][:n_floor]), test)
    if ref.space == INCEPTION and "logits" in generated:
        mine |= inception_score(generated["logits"], seed)
        at_floor |= inception_score(ref.floor["logits"][:n_floor], seed)
    elif ref.space == INCEPTION:
        none = {"inception_score": None, "inception_score_std": None}
        mine |= none | {"inception_score_unavailable": NO_LOGITS}
        at_floor |= none
    return mine, at_floor


def fid_with_floor(generated: dict[str, np.ndarray], ref: Reference, feature: str) -> dict:
    """FID only (the sampler sweep): samples against the held-out split, and the floor at the same N."""
    samples, test = generated[feature], gaussian_stats(ref.test[feature])
    n_floor = min(len(samples), len(ref.floor[feature]))
    return {"fid": frechet_distance(gaussian_stats(samples), test), "n_samples": len(samples),
            "fid_floor": frechet_distance(gaussian_stats(ref.floor[feature][:n_floor]), test), "n_floor": n_floor}


def coverage(logits: np.ndarray, test_labels: np.ndarray, class_names: list[str], confidence: float,
             real_logits: np.ndarray | None = None) -> dict:
    """Class verdicts of the domain classifier on the samples against the data's class shares.

    `real_logits` (real images the classifier never saw) give the share of real images it
    classifies confidently: the yardstick for the samples' share.
    """
    probs = softmax(np.asarray(logits, dtype=np.float64), axis=1)
    out = {"n_samples": len(probs), **class_coverage(probs, test_labels, class_names, confidence)}
    if real_logits is not None:
        real = softmax(np.asarray(real_logits, dtype=np.float64), axis=1)
        out["confident_share_real"] = confident_share(real, confidence)
        out["n_real"] = len(real)
    return out


PER_CLASS_FID_MIN_N = 50  # fewer samples of a class: its Fréchet distance is mostly small-sample bias


def fid_per_class(features: np.ndarray, labels: np.ndarray, test_features: np.ndarray, test_labels: np.ndarray,
                  class_names: list[str], min_n: int = PER_CLASS_FID_MIN_N) -> dict[str, float | None]:
    """FID of the samples drawn for class c against the held-out images of class c, per class; None for a
    class with fewer than `min_n` samples or held-out images."""
    labels, test_labels = np.asarray(labels), np.asarray(test_labels)
    if len(labels) != len(features) or len(test_labels) != len(test_features):
        raise DataError(f"{len(features)} sample and {len(test_features)} held-out features do not match their "
                        f"{len(labels)} and {len(test_labels)} labels: re-run the reference and sample stages")
    out: dict[str, float | None] = {}
    for c, name in enumerate(class_names):
        mine, real = features[labels == c], test_features[test_labels == c]
        enough = min(len(mine), len(real)) >= min_n
        out[name] = frechet_distance(gaussian_stats(mine), gaussian_stats(real)) if enough else None
    return out


def conditional_accuracy(logits: np.ndarray, labels: np.ndarray, class_names: list[str],
                         real_logits: np.ndarray | None = None, real_labels: np.ndarray | None = None) -> dict:
    """A class-conditional model's samples: the share of samples of class c that the domain classifier
    assigns to c, per class and overall (per class null where no sample was asked for that class).

    `real_logits`, `real_labels` (real images the classifier never saw) give the same share for real
    images, the classifier's own accuracy: the yardstick, since its errors count against the samples too.
    """
    def shares(logits: np.ndarray, labels: np.ndarray) -> tuple[float, list[float | None]]:
        hit = np.asarray(logits).argmax(axis=1) == labels
        per = [float(hit[labels == c].mean()) if (labels == c).any() else None for c in range(len(class_names))]
        return float(hit.mean()), per

    labels = np.asarray(labels)
    if len(labels) != len(logits) or labels.min() < 0 or labels.max() >= len(class_names):
        raise DataError(f"the samples' labels ({len(labels)}, from {labels.min()} to {labels.max()}) do not fit "
                        f"{len(logits)} samples of {len(class_names)} classes: re-run sample after train")
    overall, per = shares(logits, labels)
    out = {"n_samples": len(labels), "accuracy": overall,
           "per_class": {name: {"samples": per[c]} for c, name in enumerate(class_names)}}
    if real_logits is not None and real_labels is not None:
        out["accuracy_real"], per_real = shares(real_logits, np.asarray(real_labels))
        out["n_real"] = len(real_labels)
        for c, name in enumerate(class_names):
            out["per_class"][name]["real"] = per_real[c]
    return out
