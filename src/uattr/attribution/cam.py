"""Class activation maps on any target: Grad-CAM, ContrastCAM, CounterfactualCAM.

All three weight a layer's activations A [K, u, v] by the spatial mean of a gradient (Grad-CAM,
Selvaraju et al. ICCV 2017), keep the positive part and upsample to the image; they differ in the
scalar differentiated and the sign of the weights (Prabhushankar et al., "Contrastive
Explanations in Neural Networks", ICIP 2020, and the OLIVES "Explanatory Paradigms" code).

Posterior samples. A posterior wrapper runs the hooked layer on S*B rows (MCDropout: one forward,
sample-major rows ``s*B + b``) or calls it once per member (DeepEnsemble; hook every member with a
``"members.*.conv2"`` pattern). Each call of each hooked layer contributes samples s with
activations A_s [K, u, v] and weights alpha_sk = mean_ij dy/dA_s^k_ij, where y [B] is the
S-sample target (e.g. the mean logit over samples, or the posterior's uncertainty). The map is

    M = ReLU( sum_s sum_k alpha_sk A_s^k ),

the ReLU applied *after* summing over samples, as Grad-CAM applies it after summing over channels:
positive and negative evidence of different samples cancel, like that of different channels. For a
class target y = (1/S) sum_s z_s, so M = ReLU(mean_s of sample s's pre-ReLU Grad-CAM); with S = 1
(a plain model) it is Grad-CAM exactly.

Activations and gradients are captured with a forward hook on the layer (it records the output
tensor and returns it unchanged) and ``torch.autograd.grad(y.sum(), activations)``; no module
backward hooks. Hooks are removed also on exceptions.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from uattr.attribution.base import Attribution, TargetFn, explained_output
from uattr.bayes.outputs import forward_posterior, log_predictive
from uattr.common import minmax_scale

__all__ = ["ContrastCAM", "CounterfactualCAM", "GradCAM", "default_cam_layer", "resolve_layers"]

LayerSpec = str | nn.Module | Sequence[str | nn.Module]


def resolve_layers(model: nn.Module, layer: LayerSpec) -> list[nn.Module]:
    """The modules of ``model`` that ``layer`` names.

    Args:
        model: the model an attribution method is given.
        layer: a dotted submodule name resolved against ``model`` (``"backbone.conv2"`` on an
            MCDropout, ``"conv2"`` on a plain LeNet5); a name with ``*`` wildcards (fnmatch, e.g.
            ``"members.*.conv2"`` for every member of a DeepEnsemble); a submodule of ``model``;
            or a sequence of these.

    Raises:
        ValueError: a name that matches nothing (the message suggests names ending like it), or a
            module that is not part of ``model``.
    """
    specs = [layer] if isinstance(layer, (str, nn.Module)) else list(layer)
    if not specs:
        raise ValueError("layer is an empty sequence; name at least one layer of the model.")
    names = dict(model.named_modules())
    found: list[nn.Module] = []
    for spec in specs:
        if isinstance(spec, nn.Module):
            if not any(spec is m for m in names.values()):
                raise ValueError(
                    f"layer {type(spec).__name__} is not a submodule of the "
                    f"{type(model).__name__} being explained; pass one of its own modules or a "
                    "dotted name."
                )
            matches = [spec]
        elif isinstance(spec, str):
            if "*" in spec or "?" in spec:
                matches = [m for n, m in names.items() if n and fnmatch.fnmatchcase(n, spec)]
            else:
                matches = [names[spec]] if spec in names and spec else []
            if not matches:
                tail = spec.rsplit(".", 1)[-1]
                hints = [n for n in names if n and n.rsplit(".", 1)[-1] == tail][:5]
                raise ValueError(
                    f"layer {spec!r} is not a submodule of {type(model).__name__}"
                    + (f"; did you mean {', '.join(map(repr, hints))}?" if hints else ".")
                    + " Names are dotted paths from the model passed in (e.g. 'backbone.conv2' "
                    "for an MCDropout around a LeNet5)."
                )
        else:
            raise TypeError(
                f"layer must be a dotted name, an nn.Module or a sequence of them, got "
                f"{type(spec).__name__}."
            )
        found.extend(m for m in matches if not any(m is f for f in found))
    return found


def default_cam_layer(model: nn.Module) -> str:
    """The dotted name of the model's last convolutional block, from its backbone's ``cam_layer``.

    ``"backbone.conv2"`` for an MCDropout LeNet5, ``"members.*.conv2"`` for a DeepEnsemble (every
    member hooked), ``"conv2"`` for a plain LeNet5.

    Raises:
        ValueError: the model declares no ``cam_layer`` (then pass ``layer=`` yourself).
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


class GradCAM(Attribution):
    """Grad-CAM (Selvaraju et al. 2017) of a class score or an uncertainty.

    ``M = ReLU(sum_s sum_k alpha_sk A_s^k)``, ``alpha_sk = mean_ij dy/dA_s^k_ij`` (see the module
    doc for posterior samples), upsampled bilinearly to H x W with ``align_corners=False`` (the
    half-pixel convention of OLIVES's ``F.interpolate`` and cv2's INTER_LINEAR). y is
    :func:`~uattr.attribution.base.explained_output`: the class logit (mean over posterior samples;
    the backbone's logit for an evidential model) for class indices, the uncertainty (nats) for an
    uncertainty kind.

    Args:
        model: a posterior wrapper, an evidential model or a plain classifier.
        layer: the layer(s) whose activations are weighted; see :func:`resolve_layers`. Usually
            the last convolutional block (``"conv2"`` of LeNet5, ``"layer4"`` of CifarResNet18).
        normalize: rescale each map to [0, 1] (per-image min-max after upsampling, OLIVES's
            order; a constant map becomes 0 where OLIVES gives NaN). Default off so the raw map,
            in units of y times activation, can be checked and compared across images.

    A callable target ``(model, x) -> [B]`` is differentiated like an uncertainty (the hooked
    layer must run inside it).
    """

    label: ClassVar[str] = "Grad-CAM"
    needs_layer: ClassVar[bool] = True
    accepts_callable: ClassVar[bool] = True
    #: the sign of the weights: +1 "why y", -1 "what lowers y" (counterfactual).
    _sign = 1.0

    def __init__(self, model: nn.Module, layer: LayerSpec, normalize: bool = False) -> None:
        super().__init__(model)
        self.layers = resolve_layers(model, layer)
        self.normalize = bool(normalize)

    def objective(self, x: torch.Tensor, target: str | torch.Tensor | TargetFn) -> torch.Tensor:
        """The scalar per image [B] whose gradients weight the activations."""
        return explained_output(self.model, x, target)

    def attribute(self, x: torch.Tensor, target: str | torch.Tensor | TargetFn) -> torch.Tensor:
        records: list[tuple[str, torch.Tensor, int]] = []

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
                raise ValueError(
                    f"{self.name} needs a layer with feature maps [N, K, u, v]; "
                    f"{type(module).__name__} returned {shape}. Pick a convolutional layer."
                )
            records.append((type(module).__name__, output, output._version))
            return output

        handles = [layer.register_forward_hook(hook) for layer in self.layers]
        try:
            y = self.objective(x, target)
        finally:
            for handle in handles:
                handle.remove()
        if not records:
            raise RuntimeError(
                f"{self.name}: the hooked layer was not called while evaluating the model; is it "
                "part of the forward pass?"
            )
        for module_name, act, version in records:
            if act._version != version:
                raise RuntimeError(
                    f"{self.name}: the output of the hooked {module_name} was modified in place "
                    "later in the forward (e.g. by ReLU(inplace=True)), so its values and "
                    "gradient are not the layer's. Hook a later layer or use inplace=False."
                )
        acts = [a for _, a, _ in records]
        grads = torch.autograd.grad(y.sum(), acts, allow_unused=True)
        b = x.shape[0]
        size = acts[0].shape[-2:]
        cam = x.new_zeros(b, *size)
        with torch.no_grad():
            for act, grad in zip(acts, grads, strict=True):
                if act.shape[0] % b or act.shape[-2:] != size:
                    raise RuntimeError(
                        f"{self.name}: hooked activations must be [S*B, K, u, v] with B = {b} and "
                        f"one spatial size; got {tuple(act.shape)} (and {tuple(size)})."
                    )
                if grad is None:  # y does not depend on this call's activations
                    continue
                a = act.reshape(-1, b, *act.shape[1:])
                g = grad.reshape(a.shape)
                alpha = g.mean((-2, -1), keepdim=True)
                cam += (self._sign * alpha * a).sum(2).sum(0).to(cam.dtype)
            maps = F.interpolate(
                F.relu(cam)[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]
            return minmax_scale(maps) if self.normalize else maps


class CounterfactualCAM(GradCAM):
    """Counterfactual Grad-CAM, "what if not P?" (Selvaraju et al. 2017; OLIVES EP code).

    Grad-CAM with negated weights: ``M = ReLU(sum_s sum_k (-alpha_sk) A_s^k)``, the regions whose
    removal would raise y the least / lower it the most. For a class target these are the
    regions that speak against that class; for an uncertainty target, regions that lower the
    uncertainty. Arguments as :class:`GradCAM`.
    """

    label: ClassVar[str] = "Counterfactual CAM"
    _sign = -1.0


class ContrastCAM(GradCAM):
    """Contrastive Grad-CAM, "why P, rather than Q?" (Prabhushankar et al. ICIP 2020).

    As the OLIVES code: y = CE(z, Q) = -log p_Q, differentiated and weighted like Grad-CAM (not
    negated). For a posterior p is the posterior predictive ``mean_s softmax(z_s)`` (computed in log
    space; ``alpha / sum(alpha)`` for an evidential model), which is ``softmax(z)`` for a plain
    model, so S = 1 reproduces OLIVES exactly. dL/dA = sum_c (p_c - 1[c = Q]) dz_c/dA, which is
    about d(z_P - z_Q)/dA when the model is confident in P: the evidence for P over Q.

    The target is P, class indices [B] (``None``: the predicted class; an uncertainty kind or a
    callable raises: a contrast is between classes); P fixes the default contrast.

    Args:
        model: a posterior wrapper, an evidential model or a plain classifier.
        layer: see :class:`GradCAM`.
        contrast: Q: ``None`` (default) picks, per image, the most probable class other than P
            under the posterior predictive, which is the second-highest class (OLIVES's default)
            when P is the predicted class; an int for every image, or a LongTensor [B].
        normalize: see :class:`GradCAM`.
    """

    label: ClassVar[str] = "Contrast CAM"
    explains: ClassVar[frozenset[str]] = frozenset({"class"})
    accepts_callable: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec,
        contrast: int | torch.Tensor | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__(model, layer, normalize)
        if contrast is not None and not (
            (isinstance(contrast, int) and not isinstance(contrast, bool))
            or (isinstance(contrast, torch.Tensor) and contrast.dtype in (torch.long, torch.int))
        ):
            raise TypeError(
                f"contrast must be None, a class index or a LongTensor[B], got {contrast!r}."
            )
        self.contrast = contrast

    def log_predictive(self, x: torch.Tensor) -> torch.Tensor:
        """log p [B, K] of the posterior predictive (differentiable w.r.t. ``x``)."""
        return log_predictive(self.model, forward_posterior(self.model, x))

    def contrast_classes(self, log_p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Q [B]: ``contrast`` or, by default, the most probable class other than P."""
        b, k = log_p.shape
        if self.contrast is None:
            others = log_p.detach().scatter(1, target[:, None], float("-inf"))
            return others.argmax(1)
        q = torch.as_tensor(self.contrast, device=log_p.device).long()
        if q.dim() == 0:
            q = q.expand(b)
        if q.shape != (b,) or q.min() < 0 or q.max() >= k:
            raise ValueError(
                f"contrast must be class indices in 0..{k - 1} for {b} image(s), got "
                f"{self.contrast!r}."
            )
        same = (q == target).nonzero().flatten().tolist()
        if same:
            raise ValueError(
                f"contrast class equals the target class P in batch rows {same[:10]}; "
                "'why P rather than Q' needs Q != P."
            )
        return q

    def objective(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # __call__ lets class indices through only (explains == {"class"}).
        log_p = self.log_predictive(x)
        k = log_p.shape[1]
        target = target.to(log_p.device)
        if target.min() < 0 or target.max() >= k:
            raise ValueError(
                f"class target out of range: the model has {k} classes, got classes "
                f"{target.min().item()}..{target.max().item()}."
            )
        q = self.contrast_classes(log_p, target)
        return -log_p.gather(1, q[:, None]).squeeze(1)
