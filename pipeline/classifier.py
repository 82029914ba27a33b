"""Stage classifier: train the domain classifier (class verdicts, the fast `domain` feature space)."""

import numpy as np

from ddpm.config import Config
from ddpm.data import floor_indices, load_split
from ddpm.evaluation.classifier import classifier_state, predict, train_classifier
from ddpm.io import save_torch, write_json
from pipeline import paths
from pipeline.stage import log, progress_enabled, run


def classifier(cfg: Config) -> None:
    train, test = load_split(paths.TRAIN_SPLIT), load_split(paths.TEST_SPLIT)
    keep = np.ones(len(train), dtype=bool)
    keep[floor_indices(len(train), len(test), cfg.seed)] = False  # the floor's real images stay unseen
    train = train.subset(keep)
    model = train_classifier(train.images, train.labels, cfg.classifier, seed=cfg.seed, progress=progress_enabled())
    accuracy = float((predict(model, test.images).probs.argmax(1) == test.labels).mean())
    save_torch(paths.CLASSIFIER, classifier_state(model))
    write_json(paths.CLASSIFIER_METRICS, {"classifier": {"test_accuracy": accuracy, "n_test": len(test),
                                                         "n_train": len(train),
                                                         "classes": int(np.max(train.labels)) + 1}})
    log.info("domain classifier: %.2f%% accuracy on %d held-out images", 100 * accuracy, len(test))


if __name__ == "__main__":
    run(classifier)
