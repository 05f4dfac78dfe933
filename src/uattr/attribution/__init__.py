"""Attribution methods: ``method(x [B, C, H, W], target) -> maps [B, H, W]``.

``target`` is an uncertainty kind (``"total"``, ``"aleatoric"``, ``"epistemic"``; ``"vacuity"`` for
evidential models) or a LongTensor[B] of classes. Every method takes the model at construction: a
posterior wrapper (``MCDropout``, ``DeepEnsemble``), an ``Evidential`` model or a plain classifier.
"""

from uattr.attribution.base import Attribution, Target, class_score, explained_output
from uattr.attribution.cam import ContrastCAM, CounterfactualCAM, GradCAM, resolve_layers
from uattr.attribution.fullgrad import (
    FullGrad,
    FullGradientDecomposition,
    full_gradient_decomposition,
)
from uattr.attribution.gradients import (
    BlurIG,
    Gradient,
    IntegratedGradients,
    SmoothGrad,
    gaussian_blur,
    integration_rule,
)
from uattr.attribution.iba import FeatureEstimator, PerSampleBottleneck
from uattr.attribution.random_map import RandomMap
from uattr.attribution.readout import Readout, ReadoutBottleneck
from uattr.attribution.registry import METHODS, build_method, default_cam_layer
from uattr.attribution.ua_backprop import Contributions, UABackprop

__all__ = [
    "METHODS",
    "Attribution",
    "BlurIG",
    "Contributions",
    "ContrastCAM",
    "CounterfactualCAM",
    "FeatureEstimator",
    "FullGrad",
    "FullGradientDecomposition",
    "GradCAM",
    "Gradient",
    "IntegratedGradients",
    "PerSampleBottleneck",
    "RandomMap",
    "Readout",
    "ReadoutBottleneck",
    "SmoothGrad",
    "Target",
    "UABackprop",
    "build_method",
    "class_score",
    "default_cam_layer",
    "explained_output",
    "full_gradient_decomposition",
    "gaussian_blur",
    "integration_rule",
    "resolve_layers",
]
