"""Stage evaluate: sample quality against the held-out split -> reports/metrics/evaluate.json."""

import numpy as np
import torch

from ddpm.classifier import classifier_from_state
from ddpm.config import Config
from ddpm.data import load_split
from ddpm.errors import DataError
from ddpm.evaluation import evaluate_domain
from ddpm.io import write_json
from pipeline import paths
from pipeline.stage import log, run


def load_samples(path=paths.SAMPLES) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} not found: run the sample stage first (dvc repro sample)")
    with np.load(path) as z:
        return z["images"]


def evaluate(cfg: Config) -> None:
    samples = load_samples()
    train, test = load_split(paths.TRAIN_SPLIT), load_split(paths.TEST_SPLIT)
    if not paths.CLASSIFIER.is_file():
        raise DataError(f"{paths.CLASSIFIER} not found: run the features stage first (dvc repro features)")
    classifier = classifier_from_state(torch.load(paths.CLASSIFIER, map_location="cpu", weights_only=True))
    metrics = evaluate_domain(classifier, samples, train, test, cfg.evaluate.confidence, seed=cfg.seed)
    write_json(paths.EVALUATE_METRICS, metrics)
    d, c = metrics["domain"], metrics["coverage"]
    log.info("domain FD %.3f (data floor %.3f, N=%d); %.1f%% confidently classified; missing classes: %s",
             d["fd"], d["fd_data_floor"], d["n_samples"], 100 * c["confident_share"],
             ", ".join(c["missing_classes"]) or "none")


if __name__ == "__main__":
    run(evaluate)
