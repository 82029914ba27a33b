"""Snapshots belong to their run: another run's is skipped with the reason and never rotated away, and a
finished training is kept, so a re-run rewrites its outputs without training again (issue 30, items 1-3).

The stage-level tests call pipeline.train.train_stage in a copy of the project with its data prepared
and its classifier trained in-process (the tiny profile's sizes): seconds each."""

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline.train
from ddpm.config import Config
from ddpm.config.groups import ClassifierConfig
from ddpm.config.training import DataConfig, DiffusionConfig, ModelConfig, TrainConfig
from ddpm.data import Dataset, load_split, load_splits, save_split
from ddpm.errors import DataError
from ddpm.interrupts import TrainingInterrupted
from ddpm.snapshots import SnapshotStore
from ddpm.train import train
from pipeline import paths
from pipeline.classifier import classifier
from pipeline.prepare import prepare
from pipeline.train import run_origin, train_stage
from tests.helpers import copy_project, run
from tests.test_kill import prepared, project, sha256  # noqa: F401 (fixtures of the slow DVC test)

CFG = Config(
    data=DataConfig(limit=200),
    model=ModelConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(14,), norm_groups=4, num_classes=0),
    diffusion=DiffusionConfig(timesteps=50),
    train=TrainConfig(steps=6, batch_size=16, warmup_steps=2, log_every=2, checkpoint_every=3, precision="fp32",
                      eval_every=3, eval_samples=4, eval_steps=2),
    classifier=ClassifierConfig(epochs=1, batch_size=32, width=8),
)
OUTPUTS = (paths.CHECKPOINT, paths.LOSS_CURVE, paths.TRAIN_EVAL, paths.TRAIN_METRICS)


class Preempted(Exception):
    pass


def preempted_after(steps: int):
    """pipeline.train's `train`, stopped by a preemption after `steps` steps and their snapshot."""
    def preempted(*args, **kwargs):
        train(*args, **kwargs, max_steps=steps)
        raise Preempted

    return preempted


def trains_again(*args, **kwargs):
    raise AssertionError("trained again")


def outputs() -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in OUTPUTS}


@pytest.fixture(scope="module")
def ready(tmp_path_factory) -> Path:
    """The project with data/prepared and models/classifier.pt for CFG."""
    root = copy_project(tmp_path_factory.mktemp("snapshots") / "p")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        prepare(CFG)
        classifier(CFG)
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def workspace(ready, tmp_path, monkeypatch) -> Path:
    root = Path(shutil.copytree(ready, tmp_path / "p", symlinks=True))
    monkeypatch.chdir(root)
    return root


def reverse_the_training_images() -> None:
    """New images, as many as before: the batch order a snapshot holds would index into other data."""
    split = load_split(paths.TRAIN_SPLIT)
    reversed_split = Dataset(split.images[::-1].copy(), split.labels[::-1].copy(), split.class_names)
    shutil.rmtree(paths.TRAIN_SPLIT)  # a split is a folder: prepare writes a new one
    save_split(paths.TRAIN_SPLIT, reversed_split)


def edit_the_code() -> None:
    with open("src/ddpm/unet.py", "a") as f:
        f.write("# an edit\n")


def retrain_the_classifier() -> None:
    classifier(dataclasses.replace(CFG, classifier=dataclasses.replace(CFG.classifier, lr=1e-3)))


def fresh_outputs(workspace: Path, monkeypatch) -> dict[Path, bytes]:
    """The outputs of a run from step 0 in a copy of `workspace` as it is now."""
    fresh = Path(shutil.copytree(workspace, workspace.parent / "fresh", symlinks=True))
    shutil.rmtree(fresh / paths.RESUME, ignore_errors=True)
    monkeypatch.chdir(fresh)
    train_stage(CFG)
    made = outputs()
    monkeypatch.chdir(workspace)
    return made


@pytest.mark.parametrize("change, words", [(reverse_the_training_images, "other prepared data"),
                                           (edit_the_code, "other code"),
                                           (retrain_the_classifier, "another probe classifier")])
def test_a_snapshot_of_other_data_code_or_classifier_is_skipped_with_the_reason(workspace, monkeypatch, caplog,
                                                                                 change, words):
    with monkeypatch.context() as m:
        m.setattr(pipeline.train, "train", preempted_after(3))
        with pytest.raises(Preempted):
            train_stage(CFG)
    assert (paths.RESUME / "step-00000003.pt").is_file()
    change()  # new images arrive, the code changes, or the classifier is retrained: another run
    expected = fresh_outputs(workspace, monkeypatch)
    caplog.clear()
    caplog.set_level(logging.INFO)
    train_stage(CFG)
    assert f"skipping snapshot {paths.RESUME / 'step-00000003.pt'}: it was written for {words}\n" in caplog.text
    assert "resuming from" not in caplog.text
    assert outputs() == expected


def test_a_snapshot_without_a_recorded_origin_is_not_resumed(tmp_path, caplog):
    images = load_splits(CFG.data, seed=0).train.images
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, eval_every=0))
    train(cfg, images, snapshots=SnapshotStore(tmp_path), progress=False, max_steps=3)  # no origin: the library's
    store = SnapshotStore(tmp_path, origin={"data": {}, "probe": None, "code": "0" * 64})
    assert train(cfg, images, snapshots=store, progress=False, max_steps=3).step == 3
    assert f"skipping snapshot {tmp_path / 'step-00000003.pt'}: it was written for an unrecorded origin" in caplog.text


def test_a_rerun_after_a_finished_run_rewrites_the_outputs_without_training_again(workspace, monkeypatch, caplog):
    train_stage(CFG)
    made = outputs()
    for path in OUTPUTS:  # what DVC does before re-running a stage whose outputs it did not record
        path.unlink()
    caplog.set_level(logging.INFO)
    with monkeypatch.context() as m:
        m.setattr(pipeline.train, "train", trains_again)
        train_stage(CFG)
    assert outputs() == made
    assert f"{paths.RESUME / 'finished.pt'} holds this run's finished training: writing its outputs" in caplog.text
    # only the final state stays: its snapshots are older than the checkpoint, and it is one checkpoint's size
    assert sorted(p.name for p in paths.RESUME.iterdir()) == ["finished.json", "finished.pt"]

    other = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, lr=5e-4))
    train_stage(other)  # another run trains, and its finished state replaces the first's
    assert f"not reusing finished run {paths.RESUME / 'finished.pt'}: it was trained for other parameters" \
        in caplog.text
    assert outputs() != made and sorted(p.name for p in paths.RESUME.iterdir()) == ["finished.json", "finished.pt"]


def test_a_damaged_finished_run_is_trained_again(workspace, caplog):
    train_stage(CFG)
    made = outputs()
    (paths.RESUME / "finished.pt").write_bytes(b"not a checkpoint")
    caplog.set_level(logging.INFO)
    train_stage(CFG)
    assert "not reusing finished run models/resume/finished.pt: its SHA-256 differs" in caplog.text
    assert outputs() == made


def test_rotation_leaves_other_runs_snapshots_alone(tmp_path):
    images = load_splits(CFG.data, seed=0).train.images
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, steps=8, keep_snapshots=1))
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=12, lr=5e-4, checkpoint_every=5))
    train(other, images, snapshots=SnapshotStore(tmp_path, keep=2), progress=False, max_steps=10)
    leftovers = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(leftovers) == ["step-00000005.pt", "step-00000005.pt.sha256",
                                 "step-00000010.pt", "step-00000010.pt.sha256"]
    full = train(cfg, images, progress=False)
    store = SnapshotStore(tmp_path, keep=cfg.train.keep_snapshots)

    def preempting_probe(model, diffusion, device):  # at step 3, the step of the run's first snapshot
        os.kill(os.getpid(), signal.SIGTERM)
        return {"fid": 1.0, "confident": 0.5}

    with pytest.raises(TrainingInterrupted) as stopped:
        train(cfg, images, snapshots=store, probe=preempting_probe, progress=False)
    assert stopped.value.snapshot == tmp_path / "step-00000003.pt" and stopped.value.snapshot.is_file()
    resumed = train(cfg, images, snapshots=store, progress=False)
    assert resumed.step == 8 and resumed.history == full.history
    # this run's newest (step 6) replaced its own step 3; the other run's two are untouched
    assert {p.name for p in tmp_path.iterdir()} - set(leftovers) == {"step-00000006.pt", "step-00000006.pt.sha256"}
    assert all((tmp_path / name).read_bytes() == data for name, data in leftovers.items())


def test_the_run_cannot_be_identified_outside_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^dvc.yaml not found: run the train stage from the project's root$"):
        run_origin(CFG)


@pytest.mark.slow
def test_dvc_repro_after_training_outside_dvc_does_not_train_again(project):  # noqa: F811 (test_kill's fixture)
    """The multi-GPU recipe without its `dvc commit`: train (under torchrun), then `dvc repro`."""
    run([sys.executable, "-m", "pipeline.train"], cwd=project)
    trained = sha256(project / paths.CHECKPOINT)
    out = run([sys.executable, "-m", "dvc", "repro", "train"], cwd=project)
    assert "writing its outputs without training again" in out.stderr and "U-Net with" not in out.stderr
    assert sha256(project / paths.CHECKPOINT) == trained
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "train"], cwd=project, capture_output=True,
                            text=True, check=True)
    assert "changed" not in status.stdout
