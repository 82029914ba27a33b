"""Stage entry points on bad input: one line naming the problem and the fix, exit 2, nothing lost."""

import sys

import numpy as np
import pytest
import yaml

from ddpm.io import atomic_path
from tests.helpers import copy_project, run, use_profile


@pytest.fixture()
def project(tmp_path):
    project = copy_project(tmp_path / "p")
    use_profile(project, "tiny")
    return project


def set_param(project, group, key, value):
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[group][key] = value
    path.write_text(yaml.safe_dump(params))


def stage(project, name):
    return run([sys.executable, "-m", f"pipeline.{name}"], cwd=project, check=False)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_parameter_fails_before_any_output(project):
    set_param(project, "train", "lr", -0.001)
    assert_one_line_error(stage(project, "prepare"), "error: prepare: train.lr = -0.001 is out of range")
    assert not (project / "data").exists()


def test_unknown_key_and_source(project):
    set_param(project, "sample", "stepz", 3)
    assert_one_line_error(stage(project, "sample"), "unknown parameter sample.stepz", "did you mean sample.steps?")
    use_profile(project, "tiny")
    set_param(project, "data", "source", "svhn")
    assert_one_line_error(stage(project, "prepare"), "data.source = 'svhn' is not allowed")


def test_failed_prepare_keeps_the_previous_output(project, tmp_path):
    assert stage(project, "prepare").returncode == 0
    meta = (project / "data/prepared/meta.json").read_text()
    (tmp_path / "empty").mkdir()
    set_param(project, "data", "source", "folder")
    set_param(project, "data", "root", str(tmp_path / "empty"))
    assert_one_line_error(stage(project, "prepare"), "holds no images")
    assert (project / "data/prepared/meta.json").read_text() == meta
    assert sorted(p.name for p in (project / "data").iterdir()) == ["prepared"]


def test_stages_out_of_order_say_what_to_run(project):
    assert_one_line_error(stage(project, "train"), "data/prepared/train not found", "dvc repro prepare")
    assert_one_line_error(stage(project, "sample"), "models/checkpoint.pt not found", "dvc repro train")


def test_corrupt_checkpoint_is_reported(project):
    (project / "models").mkdir()
    (project / "models/checkpoint.pt").write_bytes(b"\x00" * 100)
    assert_one_line_error(stage(project, "sample"), "cannot be read", "re-run the train stage")
    assert not (project / "samples").exists()


def test_atomic_path_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_evaluate_refuses_bad_samples_and_writes_no_metrics(project):
    for name in ("prepare", "classifier", "reference"):
        assert stage(project, name).returncode == 0, name
    assert sorted(p.name for p in (project / "data/reference").iterdir()) == ["domain.npz"]
    (project / "samples").mkdir()
    np.savez(project / "samples/samples.npz", images=np.full((24, 28, 28, 1), np.nan, np.float32))
    assert_one_line_error(stage(project, "evaluate"), "error: evaluate: samples are float32 with NaN or inf",
                          "re-run sample")
    np.savez(project / "samples/samples.npz", images=np.zeros((24, 32, 32, 1), np.uint8))
    assert_one_line_error(stage(project, "evaluate"), "re-run train and sample")
    set_param(project, "sample", "num_samples", 8)  # fewer than evaluate.kid_subset_size = 10
    assert_one_line_error(stage(project, "evaluate"), "sample.num_samples = 8 is too few",
                          "evaluate.kid_subset_size = 10")
    assert not (project / "reports/metrics/evaluate.json").exists()


def test_two_dvc_repro_at_once_the_second_says_so_in_one_line(project):
    """DVC's repo lock: a second `dvc repro` in the same workspace stops at once, touching nothing."""
    from dvc.lock import make_lock

    run(["git", "init", "-q"], cwd=project)
    lock = make_lock(str(project / ".dvc/tmp/lock"), tmp_dir=str(project / ".dvc/tmp"))
    (project / ".dvc/tmp").mkdir(parents=True, exist_ok=True)
    lock.lock()
    try:
        proc = run([sys.executable, "-m", "dvc", "repro"], cwd=project, check=False)
    finally:
        lock.unlock()
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "Unable to acquire lock" in errors[0]
    assert not (project / "data").exists()


def test_progress_bars_only_on_a_terminal_unless_asked(monkeypatch):
    """A log file gets no redrawn progress bars; DDPM_PROGRESS decides when set."""
    from pipeline.stage import progress_enabled

    class Stream:
        def __init__(self, tty: bool):
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.delenv("DDPM_PROGRESS", raising=False)
    for tty in (False, True):
        monkeypatch.setattr(sys, "stderr", Stream(tty))
        assert progress_enabled() is tty
        monkeypatch.setenv("DDPM_PROGRESS", "0")
        assert progress_enabled() is False
        monkeypatch.setenv("DDPM_PROGRESS", "1")
        assert progress_enabled() is True
        monkeypatch.delenv("DDPM_PROGRESS")
