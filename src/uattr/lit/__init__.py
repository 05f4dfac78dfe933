"""LightningModules: the Bayesian and evidential classifiers, and safe checkpoint loading."""

from uattr.lit.bayesian import BayesianClassifier
from uattr.lit.checkpoint import load_checkpoint, saved_config
from uattr.lit.evidential import EvidentialClassifier
from uattr.lit.routine import ClassifierRoutine, Prediction

__all__ = [
    "BayesianClassifier",
    "ClassifierRoutine",
    "EvidentialClassifier",
    "Prediction",
    "load_checkpoint",
    "saved_config",
]
