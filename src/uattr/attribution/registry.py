"""Attribution methods by name, for configs, callbacks and ``evaluate.py``.

:data:`METHODS` maps each name to its class, in the order of the report tables. What a method
explains and needs is metadata on its class (:class:`~uattr.attribution.base.Attribution`):
``METHODS[name].label``, ``.explains_uncertainty``, ``.class_dependent``, ``.needs_layer``,
``.needs_statistics``, ``.required_kwargs``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from uattr.attribution.base import Attribution
from uattr.attribution.cam import ContrastCAM, CounterfactualCAM, GradCAM, default_cam_layer
from uattr.attribution.fullgrad import FullGrad
from uattr.attribution.gradients import BlurIG, Gradient, IntegratedGradients, SmoothGrad
from uattr.attribution.iba import PerSampleBottleneck, ReadoutBottleneck
from uattr.attribution.random_map import RandomMap
from uattr.attribution.ua_backprop import UABackprop

__all__ = [
    "METHODS",
    "build_method",
    "check_uncertainty_methods",
    "default_cam_layer",
    "method_class",
]

#: name -> class, in the order of the report tables.
METHODS: dict[str, type[Attribution]] = {
    "ua_backprop": UABackprop,
    "gradient": Gradient,
    "smoothgrad": SmoothGrad,
    "integrated_gradients": IntegratedGradients,
    "blur_ig": BlurIG,
    "fullgrad": FullGrad,
    "gradcam": GradCAM,
    "counterfactual_cam": CounterfactualCAM,
    "contrast_cam": ContrastCAM,
    "per_sample_iba": PerSampleBottleneck,
    "readout": ReadoutBottleneck,
    "random": RandomMap,
}


def method_class(name: str) -> type[Attribution]:
    """The class registered as ``name``.

    Raises:
        ValueError: an unknown name (the message lists the registered ones).
    """
    cls = METHODS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown attribution method {name!r}; choose from {', '.join(METHODS)}.")
    return cls


def check_uncertainty_methods(
    methods: str | Sequence[str],
    uncertainty: str,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """Validate the methods a callback runs on an uncertainty target, and their kwargs.

    A method that explains class scores only is allowed when its map does not depend on the
    target (``class_dependent`` false, the trained readout): the callbacks run it with no target.

    Returns:
        ``(method names, {name: constructor kwargs})`` (copies).

    Raises:
        ValueError: no method, repeated or unknown names, a class-only method whose map depends
            on the class, or kwargs for a method not in ``methods``.
    """
    names = (methods,) if isinstance(methods, str) else tuple(methods)
    if not names:
        raise ValueError("methods is empty: name at least one attribution method.")
    if len(set(names)) != len(names):
        raise ValueError(f"methods must be distinct, got {list(names)}.")
    for name in names:
        cls = method_class(name)
        if not cls.explains_uncertainty and cls.class_dependent:
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


def _describe(cls: type[Attribution], argument: str) -> str:
    """What the constructor expects for ``argument``: its annotation, else "..."."""
    parameter = inspect.signature(cls).parameters.get(argument)
    if parameter is None or parameter.annotation is inspect.Parameter.empty:
        return "..."
    annotation = parameter.annotation
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "...")


def build_method(name: str, model: nn.Module, **kwargs: Any) -> Attribution:
    """Construct the attribution method ``name`` (a key of :data:`METHODS`) on ``model``.

    Methods with ``needs_layer`` get :func:`default_cam_layer` unless ``layer`` is given. A method
    with ``needs_statistics`` still needs ``method.estimate(data, n_samples=...)`` before use.

    Raises:
        ValueError: an unknown name, or a missing entry of the class's ``required_kwargs``.
    """
    cls = method_class(name)
    missing = [k for k in cls.required_kwargs if kwargs.get(k) is None]
    if missing:
        needed = ", ".join(f"{k}=<{_describe(cls, k)}>" for k in missing)
        raise ValueError(
            f"the {name!r} method ({cls.__name__}) needs {needed}, which has no default: pass "
            f"build_method({name!r}, model, {missing[0]}=...) or put it in the method's kwargs."
        )
    if cls.needs_layer and kwargs.get("layer") is None:
        kwargs["layer"] = default_cam_layer(model)
    return cls(model, **kwargs)
