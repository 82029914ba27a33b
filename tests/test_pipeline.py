"""The whole DAG on the tiny profile in a temporary git copy: run, skip, re-run what changed.

Every test starts from one `dvc repro` of the whole DAG (fixture first_repro); a test that changes the
project works in its own copy, so each passes alone and in any order."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import copy_project, ran, run, use_profile

STAGES = ["prepare", "classifier", "noisy_classifier", "reference", "train", "register", "sample", "evaluate", "sweep",
          "promote", "report"]
REGISTRY = ["register"]  # always_changed: it asks the MLflow registry on every run
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("dag") / "p")
    use_profile(project, "tiny")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        run(cmd, cwd=project)
    return project


def dvc(project, *args):
    return run([sys.executable, "-m", "dvc", *args], cwd=project)


@pytest.fixture(scope="module")
def first_repro(project) -> str:
    """The first `dvc repro` in the project: its output."""
    return dvc(project, "repro").stdout


def test_repro_runs_every_stage_and_writes_the_report(first_repro, project):
    assert sorted(ran(first_repro)) == sorted(STAGES)
    report = (project / "reports/report.md").read_text()
    for needle in ["![samples](figures/samples.png)", "![loss curve](figures/loss.png)", "| FID ↓ | domain | 24 vs",
                   "| KID ↓ | domain |", "## FID against the sampler", "| ddpm | 50 |", "| ddim | 4 |",
                   "## Parameters"]:
        assert needle in report
    html = (project / "reports/report.html").read_text()
    assert "<table>" in html and '<img alt="samples" src="data:image/png;base64,' in html  # embedded: one file
    evaluate = json.loads((project / "reports/metrics/evaluate.json").read_text())
    domain = evaluate["domain"]
    assert domain["n_samples"] == 24 and evaluate["coverage"]["n_samples"] == 24
    assert 0.0 <= evaluate["coverage"]["confident_share_real"] <= 1.0
    assert domain["floor"]["n_samples"] == 24 and domain["n_reference"] == meta_counts(project)["test"]
    assert domain["fid"] > domain["floor"]["fid"]  # 6 training steps give noise, far from real images
    for key in ("kid_mean", "kid_std", "precision", "recall"):
        assert key in domain and key in domain["floor"]
    nll = evaluate["nll"]  # the bound on 8 held-out images from 5 stratified KL terms each
    assert nll["n"] == 8 and nll["terms"] == 5 and nll["variance"] == "beta" and not nll["conditional"]
    assert nll["bits_per_dim"] == pytest.approx(nll["prior"] + nll["kl"] + nll["decoder"]) and nll["bits_per_dim"] > 0
    assert f"NLL bound **{nll['bits_per_dim']:.4f} ±" in report
    sweep = (project / "reports/plots/sampler_sweep.csv").read_text().splitlines()
    assert sweep[0].startswith("sampler,steps,space,fid")
    assert [tuple(r.split(",")[:2]) for r in sweep[1:]] == [("ddim", "2"), ("ddim", "4"), ("dpmpp_2m", "2"),
                                                            ("dpmpp_2m", "4"), ("dpmpp_2m_sde", "2"),
                                                            ("dpmpp_2m_sde", "4"), ("ddpm", "2"), ("ddpm", "4"),
                                                            ("ddpm", "50")]
    # an unconditional model: no guidance sweep, and its DVC plot holds the header only
    assert (project / "reports/plots/guidance_sweep.csv").read_text().splitlines() == [
        "guidance,classifier_scale,fid,fid_floor,accuracy,space,n_samples,n_floor"]
    # no classifier guidance asked for: the noisy classifier's file says it was not trained
    assert json.loads((project / "models/noisy_classifier.pt").read_text())["noisy_classifier"] == "not trained"
    assert json.loads((project / "reports/metrics/noisy_classifier.json").read_text()) == {
        "noisy_classifier": {"trained": False}}
    assert "guidance" not in json.loads((project / "reports/metrics/sweep.json").read_text())
    assert "## Class-conditional samples" not in report
    meta = json.loads((project / "data/prepared/meta.json").read_text())
    counts = meta["counts"]  # limit 200, test_fraction 0.2, rounded per class (stratified)
    assert counts["train"] + counts["test"] == 200 and 35 <= counts["test"] <= 45
    assert len(meta["sha256"]["train"]) == 64


def meta_counts(project):
    return json.loads((project / "data/prepared/meta.json").read_text())["counts"]


def test_second_repro_skips_everything(first_repro, project):
    out = dvc(project, "repro").stdout
    assert ran(out) == REGISTRY
    assert out.count("didn't change, skipping") == len(STAGES) - len(REGISTRY)


def test_changing_a_sampling_parameter_reruns_only_what_follows(first_repro, project, tmp_path):
    project = Path(shutil.copytree(project, tmp_path / "p", symlinks=True))
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["sample"]["steps"] = 3
    path.write_text(yaml.safe_dump(params))
    diff = dvc(project, "params", "diff").stdout
    assert "sample.steps" in diff
    out = dvc(project, "repro").stdout
    assert ran(out) == ["register", "sample", "evaluate", "promote", "report"]
    shown = dvc(project, "metrics", "show").stdout
    assert "domain.fid" in shown and "domain.floor.kid_mean" in shown and "train.final_loss" in shown
    assert json.loads((project / "reports/metrics/sample.json").read_text())["sample"]["steps"] == 3


def stages_marked_changed(project: Path) -> set[str]:
    """The stages `dvc status` says have a changed dependency ("registry/dvc.yaml:register" as "register")."""
    status = json.loads(dvc(project, "status", "--json").stdout or "{}")
    return {name.rpartition(":")[2] for name, changes in status.items()
            if any("changed deps" in change for change in changes if isinstance(change, dict))}


# (module, the stages that import it): an edit to one of these re-runs these stages and no other
TOUCHED = [
    ("src/ddpm/tracking/champion.py", {"register", "promote", "report"}),  # rewording the gate re-trains nothing
    # (register runs on every `dvc repro` anyway: it asks the registry)
    ("src/ddpm/evaluation/inception.py", {"reference", "evaluate", "sweep"}),  # nor does an Inception edit
    ("src/ddpm/report/render.py", {"report"}),  # the renderer is the report's alone
    # the model (and the noisy classifier built of its blocks), and evaluate, whose NLL runs the model; not the
    # reference features
    ("src/ddpm/unet.py", {"noisy_classifier", "train", "register", "sample", "evaluate", "sweep", "report"}),
]


def test_touching_a_module_marks_only_the_stages_that_import_it(first_repro, project, tmp_path):
    project = Path(shutil.copytree(project, tmp_path / "p", symlinks=True))
    assert stages_marked_changed(project) == set()
    for module, stages in TOUCHED:
        path = project / module
        original = path.read_bytes()
        path.write_bytes(original + b"\n# touched\n")
        assert stages_marked_changed(project) == stages, module
        path.write_bytes(original)
