"""Attribution methods: ``method(x [B, C, H, W], target=None) -> maps [B, H, W]``.

``target`` is an uncertainty kind (``"total"``, ``"aleatoric"``, ``"epistemic"``; ``"vacuity"`` for
evidential models), a LongTensor[B] of classes, ``None`` (the class the model predicts) or, for
the methods whose ``accepts_callable`` is true, a callable ``(model, x) -> Tensor[B]``. Every
method takes the model at construction: a posterior wrapper (``MCDropout``, ``DeepEnsemble``), an
``Evidential`` model or a plain classifier. What a method explains and needs is metadata on its
class (:class:`Attribution`); :data:`METHODS` lists them by name.
"""

from uattr.attribution.base import (
    Attribution,
    Target,
    TargetFn,
    class_score,
    explained_output,
    resolve_target,
)
from uattr.attribution.cam import (
    ContrastCAM,
    CounterfactualCAM,
    GradCAM,
    default_cam_layer,
    resolve_layers,
)
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
from uattr.attribution.iba import FeatureEstimator, PerSampleBottleneck, Readout, ReadoutBottleneck
from uattr.attribution.random_map import RandomMap
from uattr.attribution.registry import METHODS, build_method, method_class
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
    "TargetFn",
    "UABackprop",
    "build_method",
    "class_score",
    "default_cam_layer",
    "explained_output",
    "full_gradient_decomposition",
    "gaussian_blur",
    "integration_rule",
    "method_class",
    "resolve_layers",
    "resolve_target",
]
