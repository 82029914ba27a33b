"""Stage reference: real-image features in each feature space, computed once and cached by DVC.

Per space: the held-out split (what samples are compared with) and as many training images
as there are held-out ones (the data floor: real against real at the samples' N).
"""

import time

import numpy as np

from ddpm.config import Config
from ddpm.data import load_split
from ddpm.evaluation import compute_reference
from ddpm.train import resolve_device
from pipeline import paths
from pipeline.spaces import feature_space
from pipeline.stage import log, progress_enabled, run


def reference(cfg: Config) -> None:
    train, test = load_split(paths.TRAIN_SPLIT), load_split(paths.TEST_SPLIT)
    n_floor = min(len(train), len(test))
    floor = train.images[np.random.default_rng(cfg.seed).permutation(len(train))[:n_floor]]
    device = str(resolve_device(cfg.train.device))
    for name in cfg.evaluate.spaces:
        space = feature_space(cfg, name)
        t0 = time.perf_counter()
        ref = compute_reference(space, test.images, floor, device=device, batch_size=cfg.evaluate.batch_size,
                                progress=progress_enabled())
        ref.save(paths.reference_file(name))
        log.info("%s reference: %d held-out + %d floor images in %.1f s (%s)", name, len(test), n_floor,
                 time.perf_counter() - t0, space.weights_label)


if __name__ == "__main__":
    run(reference)
