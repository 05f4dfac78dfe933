"""LightningModules: Bayesian and evidential classifiers, the readout bottleneck, checkpoints."""

from uattr.lit.bayesian import BayesianClassifier
from uattr.lit.checkpoint import load_checkpoint, saved_config
from uattr.lit.evidential import EvidentialClassifier
from uattr.lit.readout import ReadoutBottleneckModule
from uattr.lit.routine import ClassifierRoutine, Prediction

__all__ = [
    "BayesianClassifier",
    "ClassifierRoutine",
    "EvidentialClassifier",
    "Prediction",
    "ReadoutBottleneckModule",
    "load_checkpoint",
    "saved_config",
]
