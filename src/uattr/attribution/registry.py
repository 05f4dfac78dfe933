"""Attribution methods by name, for configs, callbacks and ``evaluate.py``."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from uattr.attribution.base import Attribution

__all__ = ["METHODS", "build_method", "default_cam_layer"]

#: name -> "module:Class"; imported lazily so a method's optional pieces load only when used
METHODS: dict[str, str] = {
    "ua_backprop": "uattr.attribution.ua_backprop:UABackprop",
    "gradient": "uattr.attribution.gradients:Gradient",
    "smoothgrad": "uattr.attribution.gradients:SmoothGrad",
    "integrated_gradients": "uattr.attribution.gradients:IntegratedGradients",
    "blur_ig": "uattr.attribution.gradients:BlurIG",
    "fullgrad": "uattr.attribution.fullgrad:FullGrad",
    "gradcam": "uattr.attribution.cam:GradCAM",
    "contrast_cam": "uattr.attribution.cam:ContrastCAM",
    "counterfactual_cam": "uattr.attribution.cam:CounterfactualCAM",
    "per_sample_iba": "uattr.attribution.iba:PerSampleBottleneck",
    "readout": "uattr.attribution.readout:ReadoutBottleneck",
    "random": "uattr.attribution.random_map:RandomMap",
}

_NEEDS_LAYER = {"gradcam", "contrast_cam", "counterfactual_cam", "per_sample_iba"}


def default_cam_layer(model: nn.Module) -> str:
    """The dotted name of the model's last convolutional block, from its backbone's ``cam_layer``.

    ``"backbone.conv2"`` for an MCDropout LeNet5, ``"members.*.conv2"`` for a DeepEnsemble (every
    member hooked), ``"conv2"`` for a plain LeNet5.
    """
    if hasattr(model, "members"):
        return f"members.*.{default_cam_layer(model.members[0])}"
    if hasattr(model, "backbone") and not hasattr(model, "cam_layer"):
        return f"backbone.{default_cam_layer(model.backbone)}"
    layer = getattr(model, "cam_layer", None)
    if layer is None:
        raise ValueError(
            f"{type(model).__name__} declares no cam_layer: pass layer=<dotted module name>."
        )
    return layer


def build_method(name: str, model: nn.Module, **kwargs: Any) -> Attribution:
    """Construct the attribution method ``name`` (a key of :data:`METHODS`) on ``model``.

    Layer-based methods get :func:`default_cam_layer` unless ``layer`` is given.
    """
    if name not in METHODS:
        raise ValueError(f"unknown attribution method {name!r}; choose from {', '.join(METHODS)}.")
    module_name, class_name = METHODS[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if name in _NEEDS_LAYER and kwargs.get("layer") is None:
        kwargs["layer"] = default_cam_layer(model)
    return cls(model, **kwargs)
