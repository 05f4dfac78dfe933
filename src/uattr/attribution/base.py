"""The contract every attribution method follows: what it explains (its *target*), what it needs
(metadata on the class), and the checks, modes and gradient handling every call gets.

A target is one of:

- an uncertainty kind, ``"total"``, ``"aleatoric"``, ``"epistemic"`` (``"vacuity"`` for an
  evidential model): that uncertainty of the posterior, in nats;
- class indices, a LongTensor [B] (an int means that class for every image): the class score
  (:func:`class_score`);
- ``None``: the class the model predicts, the argmax of the posterior mean (:func:`resolve_target`);
- a callable ``(model, x [B, C, H, W]) -> Tensor[B]``: any scalar per image, differentiable in x
  and computed row by row (row b depends on image b only), explained like an uncertainty by the
  methods whose :attr:`Attribution.accepts_callable` is true.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from uattr.bayes.outputs import predicted_class
from uattr.bayes.posterior import (
    check_uncertainty_kind,
    posterior_kind,
    sample_logits,
    uncertainty,
)
from uattr.common import ALL_UNCERTAINTY_KINDS, UncertaintyKind, check_images
from uattr.modes import evaluating

__all__ = [
    "EXPLAINABLE",
    "Attribution",
    "Target",
    "TargetFn",
    "UncertaintyKind",
    "check_target",
    "class_score",
    "differentiable_output",
    "explained_output",
    "renamed_arguments",
    "resolve_target",
]

#: A callable target: ``(model, x [B, C, H, W]) -> Tensor[B]``, differentiable in ``x``.
TargetFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
Target = UncertaintyKind | torch.Tensor | int | TargetFn | None
#: What a method may explain (:attr:`Attribution.explains`).
EXPLAINABLE: frozenset[str] = frozenset({"uncertainty", "class"})

_TARGET_FORMS = (
    f"an uncertainty kind ({', '.join(ALL_UNCERTAINTY_KINDS)}), class indices LongTensor[B] or an "
    "int, None (the predicted class), or a callable (model, x) -> Tensor[B]"
)


def _is_target_fn(target: Any) -> bool:
    return callable(target) and not isinstance(target, str | torch.Tensor)


def check_target(target: Target, batch_size: int) -> str | torch.Tensor | TargetFn | None:
    """Validate ``target`` for a batch of ``batch_size`` images and return its checked form.

    An uncertainty kind and a callable are returned as they are, an int becomes a LongTensor[B]
    of that class, an integer tensor [B] a LongTensor, and ``None`` stays ``None`` (the caller
    resolves it with the model: :func:`resolve_target`). Whether the model has the kind
    (``"vacuity"``) and whether classes are in range are checked where the model is known.

    Raises:
        ValueError: an unknown kind, or class indices of another shape than [B].
        TypeError: any other type (a float tensor, a bool, ...).
    """
    if target is None or _is_target_fn(target):
        return target
    if isinstance(target, str):
        if target not in ALL_UNCERTAINTY_KINDS:
            raise ValueError(f"unknown target {target!r}: use {_TARGET_FORMS}.")
        return target
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.full((batch_size,), target, dtype=torch.long)
    if not isinstance(target, torch.Tensor) or target.dtype not in (torch.long, torch.int):
        what = type(target).__name__
        if isinstance(target, torch.Tensor):
            what += f" of dtype {target.dtype}"
        raise TypeError(f"target must be {_TARGET_FORMS}; got {what}.")
    if target.shape != (batch_size,):
        raise ValueError(
            f"class target must have shape [B] = [{batch_size}], got {tuple(target.shape)}."
        )
    return target.long()


def resolve_target(
    model: nn.Module, x: torch.Tensor, target: Target
) -> str | torch.Tensor | TargetFn:
    """:func:`check_target`, with ``None`` replaced by the class ``model`` predicts for ``x``
    (argmax of the posterior mean, LongTensor [B], computed in eval mode without gradients)."""
    target = check_target(target, x.shape[0])
    if target is None:
        with torch.inference_mode(False):
            return predicted_class(model, x.detach())
    return target


def class_score(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The score of class ``target`` [B] that class attributions explain, shape [B].

    A sampling posterior scores the mean logit over its S fixed samples (a linear function of the
    per-sample logits, so completeness of each sample carries over). An evidential model
    (:func:`~uattr.bayes.posterior.is_evidential`) scores its backbone's logit, the pre-evidence
    activation, when it has a ``backbone`` module, else ``log alpha`` (whose softmax is the
    expected probability alpha / S). Any other module scores its logit.
    """
    kind = posterior_kind(model)
    if kind == "evidential":
        backbone = getattr(model, "backbone", None)
        logits = backbone(x) if isinstance(backbone, nn.Module) else model.alpha(x).log()
    elif kind == "sampling":
        logits = sample_logits(model, x).mean(0)
    else:
        logits = sample_logits(model, x)[0]
    if target.max() >= logits.shape[-1] or target.min() < 0:
        raise ValueError(
            f"class target out of range: the model has {logits.shape[-1]} classes, "
            f"got classes {target.min().item()}..{target.max().item()}."
        )
    return logits.gather(1, target.to(logits.device)[:, None]).squeeze(1)


def explained_output(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """The scalar per image [B] that an attribution of ``target`` explains (differentiable in x).

    An uncertainty kind gives that uncertainty of the posterior (nats, fixed posterior samples, so a
    deterministic function of ``x``); class indices give :func:`class_score`; ``None`` the class
    score of the class predicted at ``x``; a callable its own value.

    Raises:
        TypeError: a callable target that does not return a tensor.
        ValueError: one that returns another shape than [B].
    """
    target = check_target(target, x.shape[0])
    if isinstance(target, str):
        return uncertainty(model, x, target)
    if target is None:
        target = resolve_target(model, x, None)
    if isinstance(target, torch.Tensor):
        return class_score(model, x, target)
    y = target(model, x)
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"a callable target must return a Tensor[B], got {type(y).__name__} from {target!r}."
        )
    if y.shape != (x.shape[0],):
        raise ValueError(
            f"a callable target must return one value per image, shape [B] = [{x.shape[0]}]; "
            f"{target!r} returned shape {tuple(y.shape)}."
        )
    return y


def differentiable_output(model: nn.Module, leaf: torch.Tensor, target: Target) -> torch.Tensor:
    """:func:`explained_output` [N] of the rows ``leaf`` [N, C, H, W], checked to be one value per
    row that autograd can differentiate w.r.t. ``leaf``.

    Raises:
        RuntimeError: another shape, or an output detached from the input inside the model.
    """
    y = explained_output(model, leaf, target)
    if y.shape != (leaf.shape[0],):
        raise RuntimeError(
            f"the explained output must have shape [N] = [{leaf.shape[0]}], got {tuple(y.shape)}."
        )
    if not y.requires_grad:
        raise RuntimeError(
            "the explained output does not depend on the input through autograd (is it detached "
            "inside the model?); gradient attributions need a differentiable model."
        )
    return y


_Init = TypeVar("_Init", bound=Callable[..., None])


def renamed_arguments(**renames: str) -> Callable[[_Init], _Init]:
    """Decorate a constructor so that an old keyword raises a TypeError naming its new name.

    ``@renamed_arguments(batch_size="internal_batch_size")``: there is no silent aliasing, the
    caller is told what to write instead. The signature (``inspect.signature``) stays the
    constructor's own.
    """

    def decorate(init: _Init) -> _Init:
        @functools.wraps(init)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
            for old, new in renames.items():
                if old in kwargs:
                    raise TypeError(
                        f"{type(self).__name__} has no argument {old!r}: it was renamed to "
                        f"{new!r}. Pass {new}={kwargs[old]!r}."
                    )
            init(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


class Attribution(ABC):
    """Base class: ``method(x [B, C, H, W], target=None) -> maps [B, H, W]``.

    ``__call__`` validates the input and the target (and that this method can explain it),
    evaluates the model in eval mode (posterior wrappers apply their fixed dropout masks / members
    themselves) and restores every submodule's train/eval flag afterwards, enables gradients even
    under ``torch.no_grad`` or ``torch.inference_mode`` callers (on a clone of ``x``), resolves
    ``target=None`` to the predicted class (:meth:`default_target`), and checks that the maps are
    finite. Subclasses implement :meth:`attribute`, which runs with gradients enabled and gets a
    checked target: a kind, a LongTensor [B] or (if :attr:`accepts_callable`) a callable.

    Metadata (class variables; the registry and the evaluation read them, a subclass overrides):

    - ``label``: display name in reports (default: the class name; not inherited);
    - ``explains``: a non-empty subset of {"uncertainty", "class"} (default both);
      ``explains_uncertainty`` / ``explains_class`` follow from it;
    - ``class_dependent``: whether the map depends on the target (False: any target gives the
      same map, e.g. a trained readout that predicts its mask from the features alone);
    - ``needs_layer``: the constructor takes ``layer=`` (the registry defaults it to the model's
      ``cam_layer``);
    - ``needs_statistics``: call ``method.estimate(data, n_samples=...)`` before the first use;
    - ``required_kwargs``: constructor inputs the registry cannot default;
    - ``accepts_callable``: a callable target ``(model, x) -> [B]`` is explained (the methods that
      only differentiate a scalar per image; methods that need per-class outputs cannot).

    Args:
        model: a posterior wrapper (``MCDropout``, ``DeepEnsemble``), an ``Evidential`` model or a
            plain classifier returning logits [B, K].
    """

    label: ClassVar[str] = "Attribution"
    explains: ClassVar[frozenset[str]] = EXPLAINABLE
    class_dependent: ClassVar[bool] = True
    needs_layer: ClassVar[bool] = False
    needs_statistics: ClassVar[bool] = False
    required_kwargs: ClassVar[tuple[str, ...]] = ()
    accepts_callable: ClassVar[bool] = False
    explains_uncertainty: ClassVar[bool] = True
    explains_class: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "label" not in cls.__dict__:
            cls.label = cls.__name__
        explains = frozenset(cls.explains)
        if not explains or not explains <= EXPLAINABLE:
            raise TypeError(
                f"{cls.__name__}.explains must be a non-empty subset of {sorted(EXPLAINABLE)}, "
                f"got {sorted(explains)}."
            )
        cls.explains = explains
        cls.explains_uncertainty = "uncertainty" in explains
        cls.explains_class = "class" in explains
        if cls.accepts_callable and not cls.explains_uncertainty:
            raise TypeError(
                f"{cls.__name__} accepts callable targets, which are explained like an "
                "uncertainty, but its explains does not include 'uncertainty'."
            )

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
        self.model = model

    @property
    def name(self) -> str:
        return type(self).__name__

    def check_supported(self, target: str | torch.Tensor | TargetFn | None) -> None:
        """Raise unless this method can explain the checked ``target`` (:func:`check_target`).

        Raises:
            ValueError: an uncertainty kind for a class-only method, or a class for an
                uncertainty-only one.
            TypeError: a callable target for a method that does not accept one.
        """
        if isinstance(target, str) and not self.explains_uncertainty:
            raise ValueError(
                f"{self.name} ({self.label}) explains class scores only and cannot attribute the "
                f"uncertainty {target!r}; pass class indices LongTensor[B] or None (the predicted "
                "class), or pick a method that explains uncertainty."
            )
        if _is_target_fn(target) and not self.accepts_callable:
            raise TypeError(
                f"{self.name} ({self.label}) cannot explain a callable target: it needs "
                + (
                    "an uncertainty kind or class indices, "
                    if self.explains_uncertainty
                    else "class indices, "
                )
                + "not an arbitrary scalar per image. The gradient methods, FullGrad and "
                "Grad-CAM accept callables."
            )
        if (target is None or isinstance(target, torch.Tensor)) and not self.explains_class:
            raise ValueError(
                f"{self.name} ({self.label}) explains uncertainty only; pass an uncertainty kind "
                f"({', '.join(ALL_UNCERTAINTY_KINDS)}), not a class target."
            )

    def default_target(self, x: torch.Tensor) -> torch.Tensor:
        """The target of ``target=None``: the class the model predicts for ``x`` [B] (argmax of
        the posterior mean), LongTensor [B]. Runs without gradients; flags restored.

        A method whose map does not depend on the target (``class_dependent`` false) gets class
        0 instead, so no forward is spent on a prediction it ignores.
        """
        if not self.class_dependent:
            return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return predicted_class(self.model, x)

    def __call__(self, x: torch.Tensor, target: Target = None) -> torch.Tensor:
        check_images(x, name=f"{self.name} inputs")
        target = check_target(target, x.shape[0])
        self.check_supported(target)
        if isinstance(target, str):
            check_uncertainty_kind(self.model, target)  # "vacuity" needs an evidential model
        with evaluating(self.model), torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone()
            if target is None:
                target = self.default_target(x)
            elif isinstance(target, torch.Tensor):
                target = target.clone()
            maps = self.attribute(x, target)
        if maps.shape != (x.shape[0], *x.shape[2:]):
            raise RuntimeError(
                f"{self.name} returned maps of shape {tuple(maps.shape)}, expected [B, H, W] = "
                f"{(x.shape[0], *x.shape[2:])}."
            )
        if not torch.isfinite(maps).all():
            raise RuntimeError(
                f"{self.name} produced NaN/Inf maps; the model's output or its gradient is not "
                "finite for these inputs."
            )
        return maps.detach()

    @abstractmethod
    def attribute(self, x: torch.Tensor, target: str | torch.Tensor | TargetFn) -> torch.Tensor:
        """Maps [B, H, W] for ``x`` [B, C, H, W] (a fresh leaf; gradients are enabled)."""
