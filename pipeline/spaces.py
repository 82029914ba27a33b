"""The configured feature spaces, resolved to extractors and weights (shared by the evaluation stages)."""

from ddpm.config import Config
from ddpm.errors import DataError
from ddpm.evaluation.feature_spaces import FeatureSpace, domain_space, inception_space
from ddpm.evaluation.scores import Reference
from pipeline import paths


def feature_space(cfg: Config, name: str) -> FeatureSpace:
    return domain_space(paths.CLASSIFIER) if name == "domain" else inception_space(cfg.evaluate.inception_weights)


def load_reference(cfg: Config, name: str) -> Reference:
    """The reference stage's features for one space, checked against the weights evaluate uses now."""
    ref = Reference.load(paths.reference_file(name))
    expected = feature_space(cfg, name).weights_label
    if ref.weights != expected:
        raise DataError(f"{paths.reference_file(name)} holds features from {ref.weights}, but evaluate uses "
                        f"{expected}: re-run the reference stage (dvc repro reference)")
    if cfg.evaluate.train_statistics and not ref.train:
        raise DataError(f"{paths.reference_file(name)} has no training-set statistics, which "
                        "evaluate.train_statistics asks for: re-run the reference stage (dvc repro reference)")
    return ref
