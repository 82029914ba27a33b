"""Stage prepare: source images -> data/prepared/{train,test}/ + meta.json. Each split is images.npy (uncompressed,
so that the later stages memory-map it and read batches without loading the set), labels.npy, class_names.json."""

from ddpm.config import Config
from ddpm.data import check_num_classes, describe, load_splits, save_split
from ddpm.io import atomic_dir, write_json
from pipeline import paths
from pipeline.stage import log, run


def prepare(cfg: Config) -> None:
    splits = load_splits(cfg.data, cfg.seed)
    if cfg.model.num_classes:  # train would refuse these labels only after the classifier stages ran
        check_num_classes(cfg.model.num_classes, splits.train.labels)
    with atomic_dir(paths.PREPARED) as out:
        save_split(out / paths.TRAIN_SPLIT.name, splits.train)
        save_split(out / paths.TEST_SPLIT.name, splits.test)
        write_json(out / paths.DATA_META.name, describe(cfg.data, cfg.seed, splits))
    log.info("prepared %s: %d train, %d held-out images of shape %s", cfg.data.source,
             len(splits.train), len(splits.test), splits.train.images.shape[1:])


if __name__ == "__main__":
    run(prepare)
