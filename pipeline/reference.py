"""Stage reference: real-image features in each feature space, computed once and cached by DVC.

Per space: the held-out split (what samples are compared with) and the training images the
domain classifier never saw (the data floor: real against real at the samples' N); with
evaluate.train_statistics, the whole training set's Gaussian statistics (the papers' protocol).
`torchrun -m pipeline.reference` splits the batches over the processes and writes one process's bytes.
"""

import time

from ddpm.config import Config
from ddpm.data import floor_indices, load_split
from ddpm.evaluation.scores import compute_reference
from ddpm.io import atomic_dir
from ddpm.runtime import distributed_from_env, init_distributed, resolve_device
from pipeline import paths
from pipeline.spaces import feature_space
from pipeline.stage import log, progress_enabled, run


def reference(cfg: Config) -> None:
    train, test = load_split(paths.TRAIN_SPLIT), load_split(paths.TEST_SPLIT)
    floor = train.images[floor_indices(len(train), len(test), cfg.seed)]
    processes = distributed_from_env()  # under torchrun the ranks split the batches; rank 0 writes
    device = str(init_distributed(processes, resolve_device(cfg.runtime.device)))
    refs = {}
    for name in cfg.evaluate.spaces:
        space = feature_space(cfg, name)
        t0 = time.perf_counter()
        refs[name] = compute_reference(space, test.images, floor, device=device, batch_size=cfg.evaluate.batch_size,
                                       train_images=train.images if cfg.evaluate.train_statistics else None,
                                       progress=progress_enabled() and processes.is_main, processes=processes)
        log.info("%s reference: %d held-out + %d floor images in %.1f s (%s)", name, len(test), len(floor),
                 time.perf_counter() - t0, space.weights_label)
    if not processes.is_main:
        return
    with atomic_dir(paths.REFERENCE) as tmp:  # all spaces or none
        for name, ref in refs.items():
            ref.save(tmp / paths.reference_file(name).name)


if __name__ == "__main__":
    run(reference)
