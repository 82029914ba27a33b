"""Where each stage reads and writes, relative to the project root. dvc.yaml names the same paths."""

from pathlib import Path

PARAMS = Path("params.yaml")

PREPARED = Path("data/prepared")
TRAIN_SPLIT = PREPARED / "train"  # images.npy (memory-mapped), labels.npy, class_names.json
TEST_SPLIT = PREPARED / "test"
DATA_META = PREPARED / "meta.json"

CLASSIFIER = Path("models/classifier.pt")
NOISY_CLASSIFIER = Path("models/noisy_classifier.pt")  # classifier guidance's p(y | x_t, t); not the domain classifier
CHECKPOINT = Path("models/checkpoint.pt")
RESUME = Path("models/resume")  # snapshots, and the finished run (ddpm.snapshots.SnapshotStore); not DVC's

SAMPLES = Path("samples/samples.npz")

REFERENCE = Path("data/reference")  # real-image features per feature space


def reference_file(space: str) -> Path:
    return REFERENCE / f"{space}.npz"


REPORTS = Path("reports")
METRICS = REPORTS / "metrics"
CLASSIFIER_METRICS = METRICS / "classifier.json"
NOISY_CLASSIFIER_METRICS = METRICS / "noisy_classifier.json"
TRAIN_METRICS = METRICS / "train.json"
SAMPLE_METRICS = METRICS / "sample.json"
EVALUATE_METRICS = METRICS / "evaluate.json"
SWEEP_METRICS = METRICS / "sweep.json"
SWEEP_TABLE = REPORTS / "plots" / "sampler_sweep.csv"
GUIDANCE_TABLE = REPORTS / "plots" / "guidance_sweep.csv"
LOSS_CURVE = REPORTS / "plots" / "loss.csv"
FIGURES = REPORTS / "figures"
SAMPLE_GRID = FIGURES / "samples.png"
LOSS_FIGURE = FIGURES / "loss.png"
TRAJECTORY_FIGURE = FIGURES / "trajectory.png"
SWEEP_FIGURE = FIGURES / "sampler_sweep.png"
COVERAGE_FIGURE = FIGURES / "coverage.png"
TRAINING_QUALITY_FIGURE = FIGURES / "training_quality.png"
COVERAGE_TABLE = REPORTS / "plots" / "class_coverage.csv"  # report: evaluate.json's class shares as a DVC plot
TRAIN_EVAL = REPORTS / "plots" / "train_eval.csv"  # FID against training step, when train measures it
REPORT_MD = REPORTS / "report.md"
REPORT_HTML = REPORTS / "report.html"
TIMING = REPORTS / "timing"  # each stage's wall time (pipeline.stage.run); not a DVC output

# MLflow: the default tracking backend, inside the project and ignored by git and DVC;
# MLFLOW_TRACKING_URI replaces both with a server.
MLFLOW_DB = Path("mlflow.db")
MLFLOW_ARTIFACTS = Path("mlruns")
REGISTERED = Path("models/registered.json")  # register: the model version holding models/checkpoint.pt
REGISTRY_METRICS = METRICS / "registry.json"  # promote: the champion gate's decision and its reason
