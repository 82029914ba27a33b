"""Stage evaluate: FID, KID, precision/recall per feature space with data floors, class coverage, a
class-conditional model's conditional accuracy, and the NLL bound in bits/dim on held-out images.
`torchrun -m pipeline.evaluate` splits the network work over the processes and writes one process's bytes."""

import time

import numpy as np

from ddpm.checkpoints import load_ema_weights
from ddpm.config import Config
from ddpm.data import Dataset, floor_indices, load_split
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import DataError
from ddpm.evaluation.feature_spaces import extract
from ddpm.evaluation.scores import (
    PER_CLASS_FID_MIN_N,
    check_samples,
    conditional_accuracy,
    coverage,
    evaluate_space,
    fid_per_class,
)
from ddpm.io import write_json
from ddpm.likelihood import dataset_bits_per_dim
from ddpm.runtime import Distributed, distributed_from_env, init_distributed, resolve_device
from pipeline import paths
from pipeline.spaces import feature_space, load_reference
from pipeline.stage import log, progress_enabled, run


def load_samples(path=paths.SAMPLES) -> tuple[np.ndarray, np.ndarray | None]:
    """The images, and each one's class when a class-conditional model drew them (else None)."""
    if not path.is_file():
        raise DataError(f"{path} not found: run the sample stage first (dvc repro sample)")
    with np.load(path) as z:
        return z["images"], z["labels"] if "labels" in z.files else None


def likelihood(cfg: Config, test: Dataset, device: str, processes: Distributed) -> dict:
    """The bound of the served EMA weights on the first evaluate.nll_images held-out images."""
    ema, _, trained = load_ema_weights(paths.CHECKPOINT, device)
    n = min(cfg.evaluate.nll_images, len(test))
    nll = dataset_bits_per_dim(ema, GaussianDiffusion.from_config(trained), test.images[:n],
                               test.labels[:n] if ema.num_classes else None, terms=cfg.evaluate.nll_terms,
                               variance=cfg.sample.variance, clip_denoised=cfg.sample.clip_denoised,
                               batch_size=cfg.evaluate.batch_size, seed=cfg.seed, device=device,
                               progress=progress_enabled() and processes.is_main, processes=processes)
    variance = "learned" if trained.model.learn_sigma else cfg.sample.variance
    return {**nll, "variance": variance, "conditional": bool(ema.num_classes)}


def evaluate(cfg: Config) -> dict:
    (samples, sample_labels), test = load_samples(), load_split(paths.TEST_SPLIT)
    check_samples(samples, test.images.shape[1:])
    refs = {name: load_reference(cfg, name) for name in cfg.evaluate.spaces}  # fail before the slow part
    processes = distributed_from_env()  # under torchrun the ranks split the network work; rank 0 scores and writes
    device = str(init_distributed(processes, resolve_device(cfg.runtime.device)))
    metrics, timing = {}, {}
    for name, ref in refs.items():
        space = feature_space(cfg, name)
        t0 = time.perf_counter()
        feats = extract(space, samples, device=device, batch_size=cfg.evaluate.batch_size,
                        progress=progress_enabled() and processes.is_main, processes=processes)
        if not processes.is_main:
            continue
        metrics[name] = evaluate_space(feats, ref, space.primary, cfg.evaluate, seed=cfg.seed)
        timing[f"{name}_s"] = time.perf_counter() - t0
        if name == "domain":
            metrics["coverage"] = coverage(feats["logits"], test.labels, test.class_names, cfg.evaluate.confidence,
                                           real_logits=ref.floor["logits"])
            if sample_labels is not None:  # the floor images: real, unseen by the classifier, labelled
                train = load_split(paths.TRAIN_SPLIT)
                metrics["conditional"] = conditional_accuracy(
                    feats["logits"], sample_labels, test.class_names, real_logits=ref.floor["logits"],
                    real_labels=train.labels[floor_indices(len(train), len(test), cfg.seed)])
                per_class_fid = fid_per_class(feats[space.primary], sample_labels, ref.test[space.primary],
                                              test.labels, test.class_names)
                for class_name, fid in per_class_fid.items():
                    metrics["conditional"]["per_class"][class_name]["fid"] = fid
                metrics["conditional"]["fid_min_n"] = PER_CLASS_FID_MIN_N
        m = metrics[name]
        log.info("%s: FID %.3f (floor %.3f), KID %.4f, precision %.3f, recall %.3f at N=%d in %.1f s", name,
                 m["fid"], m["floor"]["fid"], m["kid_mean"], m["precision"], m["recall"], m["n_samples"],
                 timing[f"{name}_s"])
        if "train" in m:
            log.info("%s: FID %.3f against the %d training images' statistics (N=%d)", name, m["train"]["fid"],
                     m["train"]["n_reference"], m["train"]["n_samples"])
    if cfg.evaluate.nll_images:
        t0 = time.perf_counter()
        metrics["nll"] = nll = likelihood(cfg, test, device, processes)
        timing["nll_s"] = time.perf_counter() - t0
        if processes.is_main:
            log.info("NLL %.4f ± %.4f bits/dim on %d held-out images (prior %.4f, KL terms %.4f from %d per "
                     "image, decoder %.4f) in %.1f s", nll["bits_per_dim"], nll["standard_error"], nll["n"],
                     nll["prior"], nll["kl"], nll["terms"], nll["decoder"], timing["nll_s"])
    if not processes.is_main:
        return timing
    write_json(paths.EVALUATE_METRICS, metrics)
    if "coverage" in metrics:
        c = metrics["coverage"]
        log.info("%.1f%% confidently classified (real held-out images: %.1f%%); missing classes: %s",
                 100 * c["confident_share"], 100 * c["confident_share_real"], ", ".join(c["missing_classes"]) or "none")
    if "conditional" in metrics:
        c = metrics["conditional"]
        log.info("conditional accuracy %.1f%% (the classifier on real held-out images: %.1f%%)",
                 100 * c["accuracy"], 100 * c["accuracy_real"])
    return timing


if __name__ == "__main__":
    run(evaluate)
