"""Attribution methods by name, for configs, callbacks and ``evaluate.py``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from uattr.attribution.base import Attribution

__all__ = [
    "CLASS_ONLY_METHODS",
    "METHODS",
    "TARGET_FREE_METHODS",
    "build_method",
    "check_uncertainty_methods",
    "default_cam_layer",
]

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

#: Methods that explain a class and cannot explain an uncertainty.
CLASS_ONLY_METHODS = frozenset({"contrast_cam", "readout"})
#: Class-only methods whose map does not depend on the class either (a trained readout predicts
#: its mask from the features alone): the validation callbacks run them with no target.
TARGET_FREE_METHODS = frozenset({"readout"})


def check_uncertainty_methods(
    methods: str | Sequence[str],
    uncertainty: str,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """Validate the methods a callback runs on an uncertainty target, and their kwargs.

    Returns:
        ``(method names, {name: constructor kwargs})`` (copies).

    Raises:
        ValueError: no method, repeated or unknown names, a class-only method whose map depends
            on the class (:data:`CLASS_ONLY_METHODS` but not :data:`TARGET_FREE_METHODS`), or
            kwargs for a method not in ``methods``.
    """
    names = (methods,) if isinstance(methods, str) else tuple(methods)
    if not names:
        raise ValueError("methods is empty: name at least one attribution method.")
    if len(set(names)) != len(names):
        raise ValueError(f"methods must be distinct, got {list(names)}.")
    for name in names:
        if name not in METHODS:
            raise ValueError(
                f"unknown attribution method {name!r}; choose from {', '.join(METHODS)}."
            )
        if name in CLASS_ONLY_METHODS - TARGET_FREE_METHODS:
            raise ValueError(
                f"{name} explains class scores only and cannot attribute the {uncertainty!r} "
                "uncertainty; remove it from methods (evaluate.py runs it on class targets)."
            )
    kwargs = {k: dict(v) for k, v in (method_kwargs or {}).items()}
    unused = set(kwargs) - set(names)
    if unused:
        raise ValueError(
            f"method_kwargs names method(s) {sorted(unused)} that are not in methods {list(names)}."
        )
    return names, kwargs


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
