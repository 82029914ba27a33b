"""Data sources, the fixed held-out split, and clear errors for bad folders."""

import numpy as np
import pytest
from PIL import Image

from ddpm.config.training import DataConfig
from ddpm.batches import read_images
from ddpm.data import floor_indices, load_split, load_splits, save_split, stratified_split
from ddpm.errors import DataError


def write_images(root, sizes_by_class):
    for cls, sizes in sizes_by_class.items():
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(np.full((h, w, 3), 40 * i, dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_embedded_mnist_split_is_fixed_stratified_and_disjoint():
    cfg = DataConfig()
    a, b = load_splits(cfg, seed=0), load_splits(cfg, seed=0)
    assert a.train.images.shape == (4000, 28, 28, 1) and a.test.images.shape == (1000, 28, 28, 1)
    assert a.train.images.dtype == np.uint8
    np.testing.assert_array_equal(a.test.images, b.test.images)
    assert np.bincount(a.test.labels).tolist() == [100] * 10
    train_rows = {r.tobytes() for r in a.train.images}
    assert sum(r.tobytes() in train_rows for r in a.test.images) < 5  # MNIST has a few duplicate digits
    c = load_splits(cfg, seed=1)
    assert not np.array_equal(a.test.images, c.test.images)


def test_folder_source_reads_class_subfolders(tmp_path):
    write_images(tmp_path, {"cats": [(8, 8)] * 5, "dogs": [(8, 8)] * 5})
    splits = load_splits(DataConfig(source="folder", root=str(tmp_path), image_size=8, channels=3,
                                    test_fraction=0.2), seed=0)
    assert splits.train.class_names == ["cats", "dogs"]
    assert len(splits.train) == 8 and len(splits.test) == 2
    assert splits.train.images.shape[1:] == (8, 8, 3)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="holds no images in class sub-folders"):
        load_splits(DataConfig(source="folder", root=str(tmp_path), image_size=8), seed=0)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist: set data.root"):
        load_splits(DataConfig(source="folder", root=str(tmp_path / "nope"), image_size=8), seed=0)


def test_mixed_sizes_are_a_clear_error(tmp_path):
    write_images(tmp_path, {"a": [(8, 8), (16, 16)]})
    with pytest.raises(DataError, match="mixes sizes.*resize all images to one size"):
        load_splits(DataConfig(source="folder", root=str(tmp_path), image_size=8), seed=0)


def test_size_and_channel_mismatch_name_the_key(tmp_path):
    write_images(tmp_path, {"a": [(16, 16)] * 4, "b": [(16, 16)] * 4})
    with pytest.raises(DataError, match="data.image_size = 8: set data.image_size: 16"):
        load_splits(DataConfig(source="folder", root=str(tmp_path), image_size=8), seed=0)
    with pytest.raises(DataError, match="set data.channels: 1"):
        load_splits(DataConfig(channels=3), seed=0)


def test_a_split_round_trips_and_is_read_from_disk_a_batch_at_a_time(tmp_path):
    splits = stratified_split(load_splits(DataConfig(limit=100), seed=0).train, 0.5, seed=0)
    save_split(tmp_path / "x", splits.train)
    back = load_split(tmp_path / "x")
    assert isinstance(back.images, np.memmap)  # not loaded: the later stages read what they use
    np.testing.assert_array_equal(back.images, splits.train.images)
    np.testing.assert_array_equal(back.labels, splits.train.labels)
    assert back.class_names == splits.train.class_names
    idx = np.array([7, 0, 7, len(back) - 1, 3])
    batch = read_images(back.images, idx)  # pread, image by image
    np.testing.assert_array_equal(batch.numpy(), splits.train.images[idx])
    np.testing.assert_array_equal(read_images(splits.train.images, idx).numpy(), splits.train.images[idx])
    with pytest.raises(DataError, match="run the prepare stage first"):
        load_split(tmp_path / "missing")


def test_a_truncated_split_is_one_line_naming_the_fix(tmp_path):
    splits = stratified_split(load_splits(DataConfig(limit=100), seed=0).train, 0.5, seed=0)
    save_split(tmp_path / "x", splits.train)
    images = load_split(tmp_path / "x").images
    with open(tmp_path / "x/images.npy", "r+b") as f:  # the file shrinks under the map, as a bad copy would leave it
        f.truncate(images.offset + 10 * images[0].nbytes)
    with pytest.raises(OSError, match="ended before image 20: re-run the prepare stage"):
        read_images(images, np.array([1, 20]))


def test_every_prefix_of_the_floor_images_is_a_random_subset():
    # the embedded training split is stored sorted by class: a floor at N = 250 must still
    # hold every digit in about its share, not the first three classes
    train = load_splits(DataConfig(), seed=0).train
    idx = floor_indices(len(train), 1000, seed=0)
    assert len(idx) == len(set(idx.tolist())) == 1000
    shares = np.bincount(train.labels[idx[:250]], minlength=10) / 250
    assert shares.min() > 0.04 and shares.max() < 0.18
