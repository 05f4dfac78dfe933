"""LightningModules: Bayesian and evidential classifiers, the readout bottleneck, checkpoints."""

from uattr.lit.bayesian import BayesianClassifier
from uattr.lit.checkpoint import (
    instantiate_from_config,
    load_checkpoint,
    rebuild_from_checkpoint,
    saved_config,
)
from uattr.lit.evidential import EvidentialClassifier
from uattr.lit.readout import ReadoutBottleneckModule, load_readout
from uattr.lit.routine import ClassifierRoutine, Prediction

__all__ = [
    "BayesianClassifier",
    "ClassifierRoutine",
    "EvidentialClassifier",
    "Prediction",
    "ReadoutBottleneckModule",
    "instantiate_from_config",
    "load_checkpoint",
    "load_readout",
    "rebuild_from_checkpoint",
    "saved_config",
]
