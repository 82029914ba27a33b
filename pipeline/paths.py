"""Where each stage reads and writes, relative to the project root. dvc.yaml names the same paths."""

from pathlib import Path

PARAMS = Path("params.yaml")

PREPARED = Path("data/prepared")
TRAIN_SPLIT = PREPARED / "train.npz"
TEST_SPLIT = PREPARED / "test.npz"
DATA_META = PREPARED / "meta.json"

CLASSIFIER = Path("models/classifier.pt")
CHECKPOINT = Path("models/checkpoint.pt")
RESUME = Path("models/resume/train.pt")  # snapshots of a run in progress; not a DVC output

SAMPLES = Path("samples/samples.npz")

REFERENCE = Path("data/reference")  # real-image features per feature space


def reference_file(space: str) -> Path:
    return REFERENCE / f"{space}.npz"


REPORTS = Path("reports")
METRICS = REPORTS / "metrics"
FEATURES_METRICS = METRICS / "features.json"
TRAIN_METRICS = METRICS / "train.json"
SAMPLE_METRICS = METRICS / "sample.json"
EVALUATE_METRICS = METRICS / "evaluate.json"
SWEEP_METRICS = METRICS / "sweep.json"
SWEEP_TABLE = REPORTS / "plots" / "sampler_sweep.csv"
LOSS_CURVE = REPORTS / "plots" / "loss.csv"
FIGURES = REPORTS / "figures"
SAMPLE_GRID = FIGURES / "samples.png"
LOSS_FIGURE = FIGURES / "loss.png"
REPORT_MD = REPORTS / "report.md"
REPORT_HTML = REPORTS / "report.html"

# MLflow (issue 5): the default tracking backend, inside the project and ignored by git and DVC;
# MLFLOW_TRACKING_URI replaces both with a server.
MLFLOW_DB = Path("mlflow.db")
MLFLOW_ARTIFACTS = Path("mlruns")
REGISTERED = Path("models/registered.json")  # register: the model version holding models/checkpoint.pt
REGISTRY_METRICS = METRICS / "registry.json"  # promote: the champion gate's decision and its reason
