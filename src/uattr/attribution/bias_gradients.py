"""Full-gradient machinery shared by FullGrad and UA-Backprop: bias terms and per-sample forwards.

The full-gradient decomposition (Srinivas & Fleuret, NeurIPS 2019, eq. 2) of a ReLU network's
output f, exact when every nonlinearity is piecewise linear through the origin (ReLU, max/avg
pooling, a dropout layer with a *fixed* mask):

    f(x) = sum(grad_x f * x) + sum_l sum(grad_{h_l} f * b_l)

where h_l is the output of the l-th layer with a bias b_l (broadcast over its positions). Layers
with a bias here (:func:`effective_bias`):

- ``Conv*d`` / ``ConvTranspose*d`` and ``nn.Linear`` with a bias;
- ``BatchNorm*d`` in eval mode, with the folded bias ``beta - mu * gamma / sqrt(var + eps)`` (the
  reference ``FullGradExtractor`` does the same; ``gamma = 1, beta = 0`` without ``affine``);
- :class:`uattr.models.Normalize` (``bias = -mean / std``), the implicit bias of in-model
  normalisation.

How the gradients are taken: forward hooks record where each biased layer's output enters the
autograd graph (a :class:`torch.autograd.graph.GradientEdge`, not the tensor), and the edges are
passed as extra ``inputs=`` of the same ``torch.autograd.grad`` call that differentiates w.r.t. the
input, so bias gradients cost no extra backward and work with ``is_grads_batched=True``. An edge
is fixed when the layer returns, so later in-place ops on the output (torchvision's ``BasicBlock``
does ``out += identity`` on bn2's output; an in-place ReLU after a conv) do not change which
gradient is returned, and holding an edge keeps no activation alive.

Posterior samples (:func:`posterior_forward`): S*B rows in one forward, sample-major (row
``s*B + b`` is image b through sample s), through a leaf that holds the *expanded* input, so each
row gets its own gradient (a leaf of B rows would sum the S samples' gradients).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from uattr.attribution.conv_input_grad import small_input_conv_gradients
from uattr.bayes.posterior import posterior_kind
from uattr.models.normalize import Normalize

__all__ = [
    "BiasOutput",
    "PosteriorForward",
    "bias_modules",
    "capture_bias_outputs",
    "effective_bias",
    "gradients",
    "input_map",
    "num_posterior_samples",
    "posterior_forward",
    "sample_forward",
    "upsample",
]


def effective_bias(module: nn.Module, name: str = "") -> tuple[torch.Tensor, int] | None:
    """The bias a module adds to its output and the output dim it runs along, or ``None``.

    Returns:
        ``(bias [C_l], channel_dim)``, detached: ``channel_dim`` is 1 for convolutions, batch norms
        and :class:`Normalize` (per channel), -1 for ``nn.Linear`` (per output feature).

    Raises:
        ValueError: a batch norm that normalises with batch statistics (training mode or
            ``track_running_stats=False``): rows then depend on each other and it has no fixed bias.
    """
    if isinstance(module, Normalize):
        return module.bias.detach(), 1
    if isinstance(module, nn.modules.conv._ConvNd):
        return (module.bias.detach(), 1) if module.bias is not None else None
    if isinstance(module, nn.Linear):
        return (module.bias.detach(), -1) if module.bias is not None else None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.training or module.running_mean is None or module.running_var is None:
            raise ValueError(
                f"BatchNorm {name or type(module).__name__} normalises with batch statistics "
                "(training mode or track_running_stats=False), so images are not independent and "
                "it has no fixed bias; full-gradient attribution needs it in eval mode with "
                "running statistics."
            )
        scale = torch.rsqrt(module.running_var.detach() + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.detach()
        shift = -module.running_mean.detach() * scale
        if module.bias is not None:
            shift = shift + module.bias.detach()
        return shift, 1
    return None


def _has_bias(module: nn.Module) -> bool:
    if isinstance(module, Normalize | nn.modules.batchnorm._BatchNorm):
        return True
    if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
        return module.bias is not None
    return False


def bias_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every submodule with a bias (see :func:`effective_bias`)."""
    return [(n, m) for n, m in model.named_modules() if _has_bias(m)]


@dataclass(frozen=True)
class BiasOutput:
    """One call of a biased layer: where its output h_l entered the graph, and its bias b_l.

    Attributes:
        name: qualified module name; the k-th call (k >= 1) of a reused module gets ``"#k"``.
        module: the layer.
        edge: the output's gradient edge (pass it as an ``inputs=`` entry of ``autograd.grad``).
        shape: the output's shape [N, ...] (N rows).
        bias: the effective bias [C_l], detached.
        channel_dim: the output dim the bias runs along (1 or -1).
    """

    name: str
    module: nn.Module
    edge: GradientEdge
    shape: torch.Size
    bias: torch.Tensor
    channel_dim: int

    @property
    def spatial(self) -> bool:
        """A per-channel bias on a 4-D [N, C_l, H_l, W_l] output: it can be mapped to pixels."""
        return len(self.shape) == 4 and self.channel_dim == 1

    def bias_view(self) -> torch.Tensor:
        """The bias shaped to broadcast against the output's trailing dims (and any leading)."""
        if self.channel_dim == 1:
            return self.bias.reshape(-1, *([1] * (len(self.shape) - 2)))
        return self.bias

    def contribution(self, grad: torch.Tensor) -> torch.Tensor:
        """``sum(grad ⊙ b_l)`` per row: grad [..., N, *shape[1:]] -> [..., N]."""
        prod = grad * self.bias_view()
        return prod.flatten(prod.dim() - len(self.shape) + 1).sum(-1)

    def abs_map(self, grad: torch.Tensor) -> torch.Tensor:
        """``sum_c |grad ⊙ b_l|`` at the layer's resolution: [..., N, C_l, H_l, W_l] -> [..., N,
        H_l, W_l] (spatial layers only), as the product of the vector |b_l| with |grad| [..., C_l,
        H_l * W_l]: one temporary the size of ``grad`` instead of two (on the CPU the big
        temporaries, not the arithmetic, dominated this step; ``docs/choices_and_timings.md``)."""
        return torch.matmul(self.bias.abs(), grad.abs().flatten(-2)).unflatten(-1, grad.shape[-2:])


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=True``, as FullGrad) of [..., h, w] maps to ``size``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(1, -1, *maps.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=True)
    return out.reshape(*lead, *size)


def input_map(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_c |grad ⊙ x|``: the input term of a full-gradient map, [..., N, C, H, W] -> [..., N,
    H, W] (a new tensor, never a view of ``grad`` or ``x``)."""
    term = (grad * x).abs_()
    return term.squeeze(-3) if term.shape[-3] == 1 else term.sum(-3)


@contextmanager
def capture_bias_outputs(model: nn.Module) -> Iterator[list[BiasOutput]]:
    """Record a :class:`BiasOutput` for every call of a biased layer of ``model`` in the block.

    Yields the list that the forward passes inside the block append to, in call order. Outputs
    that do not require grad (nothing upstream does) are skipped: they cannot carry a gradient.
    The hooks leave the outputs unchanged and are removed on exit, also on errors.
    """
    records: list[BiasOutput] = []
    calls: dict[int, int] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            found = effective_bias(module, name)
            if found is None:
                return
            k = calls.get(id(module), 0)
            calls[id(module)] = k + 1
            bias, channel_dim = found
            records.append(
                BiasOutput(
                    name=name if k == 0 else f"{name}#{k}",
                    module=module,
                    edge=get_gradient_edge(output),
                    shape=output.shape,
                    bias=bias.to(dtype=output.dtype, device=output.device),
                    channel_dim=channel_dim,
                )
            )

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in bias_modules(model)]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def gradients(
    outputs: torch.Tensor,
    x: torch.Tensor,
    sites: Sequence[BiasOutput],
    grad_outputs: torch.Tensor,
    batched: bool,
    retain_graph: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Gradients of ``outputs`` w.r.t. ``x`` and every site's output, in one backward.

    Args:
        outputs: the differentiated tensor.
        x: a tensor in the graph (the input leaf).
        sites: biased-layer outputs (:func:`capture_bias_outputs`).
        grad_outputs: the cotangent, shaped like ``outputs``; with ``batched`` it has an extra
            leading dim of k cotangents, and every result gets that leading dim
            (``is_grads_batched=True``: one vectorised backward).

    Returns:
        ``(grad_x, [grad_h_l, ...])``; a site ``outputs`` does not depend on gets zeros.
    """
    grads = torch.autograd.grad(
        outputs,
        [x, *(s.edge for s in sites)],
        grad_outputs=grad_outputs,
        retain_graph=retain_graph,
        allow_unused=True,
        is_grads_batched=batched,
    )
    lead = (grad_outputs.shape[0],) if batched else ()
    out = [
        g if g is not None else x.new_zeros(*lead, *shape)
        for g, shape in zip(grads, [x.shape, *(s.shape for s in sites)], strict=True)
    ]
    return out[0], out[1:]


class PosteriorForward(NamedTuple):
    """One forward of all S posterior samples, ready for per-row gradients.

    Attributes:
        logits: [S, B, K] logits (an evidential model's backbone logits, S = 1).
        inputs: the leaf [S*B, C, H, W], sample-major (row ``s*B + b`` = image b, sample s).
        sites: biased-layer outputs recorded in the forward.
        rows: for each site, the rows of ``inputs`` its output covers (``slice(0, S*B)``, or one
            ensemble member's ``slice(m*B, (m+1)*B)``).
    """

    logits: torch.Tensor
    inputs: torch.Tensor
    sites: list[BiasOutput]
    rows: list[slice]


def num_posterior_samples(model: nn.Module) -> int:
    """S: a sampling posterior's ``num_samples``; 1 for an evidential or a plain model."""
    if posterior_kind(model) == "sampling":
        return int(model.num_samples)
    return 1


def _logit_model(model: nn.Module) -> nn.Module:
    """The module whose logits are explained for a single-sample model."""
    if posterior_kind(model) == "evidential":
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise TypeError(
                f"{type(model).__name__} is evidential but has no .backbone module; full-gradient "
                "attribution explains the backbone's logits (alpha = evidence(logits) + 1)."
            )
        return backbone
    return model


def _check_logits(logits: torch.Tensor, rows: int, who: str) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != rows:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise RuntimeError(f"{who} must return logits [{rows}, K], got {shape}.")
    return logits


def posterior_forward(model: nn.Module, x: torch.Tensor) -> PosteriorForward:
    """Run every posterior sample of ``model`` on ``x`` [B, C, H, W] in one graph.

    First convolutions get the faster CPU input gradient of
    :func:`~uattr.attribution.conv_input_grad.small_input_conv_gradients` (parameters get no
    gradient). Sampling posteriors (``MCDropout``, ``DeepEnsemble``) run through their
    ``sample_logits_expanded`` on the S*B-row leaf (an ensemble with hooked layers takes its member
    loop, so each member's hooks see its own rows); an evidential model runs its backbone, a plain
    model itself, as S = 1. Call with gradients enabled; the model's modes are the caller's.
    """
    b = x.shape[0]
    s = num_posterior_samples(model)
    xs = x.detach().repeat(s, *([1] * (x.dim() - 1))).requires_grad_(True)
    with small_input_conv_gradients(model), capture_bias_outputs(model) as sites:
        if posterior_kind(model) == "sampling":
            if not callable(getattr(model, "sample_logits_expanded", None)):
                raise TypeError(
                    f"{type(model).__name__} has sample_logits but no sample_logits_expanded(xs) "
                    "[S*B, C, H, W] -> [S, B, K]; per-sample gradients need the expanded batch as "
                    "the gradient leaf."
                )
            logits = model.sample_logits_expanded(xs)
            if logits.dim() != 3 or logits.shape[:2] != (s, b):
                raise RuntimeError(
                    f"{type(model).__name__}.sample_logits_expanded must return [S, B, K] = "
                    f"[{s}, {b}, K], got {tuple(logits.shape)}."
                )
        else:
            logits = _check_logits(_logit_model(model)(xs), b, type(model).__name__)[None]
    member_of = {
        id(mod): m
        for m, member in enumerate(getattr(model, "members", None) or [])
        for mod in member.modules()
    }
    rows = []
    for site in sites:
        n = site.shape[0]
        if n == s * b:
            rows.append(slice(0, s * b))
        elif n == b and id(site.module) in member_of:
            m = member_of[id(site.module)]
            rows.append(slice(m * b, (m + 1) * b))
        else:
            raise RuntimeError(
                f"layer {site.name} saw {n} rows; expected S*B = {s * b} (all samples) or one "
                f"ensemble member's B = {b}. Full-gradient attribution needs batch-first layers."
            )
    return PosteriorForward(logits, xs, list(sites), rows)


@contextmanager
def _one_dropout_sample(model: nn.Module, sample: int) -> Iterator[None]:
    """MCDropout's fixed masks of one sample on a B-row forward of its backbone (in eval mode).

    Built from the public ``dropout_modules()`` / ``mask()`` of :class:`~uattr.bayes.MCDropout`, so
    it is an independent check of the batched, sample-major ``sample_logits_expanded``.
    """
    total = int(model.num_samples)
    handles = []

    def make_hook(index: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            mask = model.mask(index, tuple(output.shape[1:]), total, output.device, output.dtype)
            return output * mask[sample]

        return hook

    try:
        for index, (_, module) in enumerate(model.dropout_modules()):
            handles.append(module.register_forward_hook(make_hook(index)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def sample_forward(
    model: nn.Module, x: torch.Tensor, sample: int
) -> tuple[torch.Tensor, torch.Tensor, list[BiasOutput]]:
    """Posterior sample ``sample`` alone on ``x`` [B, ...]: ``(leaf [B, ...], logits [B, K],
    sites)``.

    The reference (naive) path of UA-Backprop: B rows per forward instead of S*B. Supports
    ``MCDropout`` (its fixed mask of that sample), ``DeepEnsemble`` (that member), and S = 1 models.
    Call in eval mode with gradients enabled.
    """
    s = num_posterior_samples(model)
    if not 0 <= sample < s:
        raise ValueError(f"sample must be in 0..{s - 1}, got {sample}.")
    leaf = x.detach().clone().requires_grad_(True)
    with capture_bias_outputs(model) as sites:
        if posterior_kind(model) != "sampling":
            net, context = _logit_model(model), _null()
        elif isinstance(getattr(model, "members", None), nn.ModuleList):
            net, context = model.members[sample], _null()
        elif callable(getattr(model, "dropout_modules", None)) and callable(
            getattr(model, "mask", None)
        ):
            net, context = model.backbone, _one_dropout_sample(model, sample)
        else:
            raise TypeError(
                f"cannot run one posterior sample of {type(model).__name__} on its own; the "
                "reference loop supports MCDropout, DeepEnsemble, evidential and plain models."
            )
        with context:
            logits = _check_logits(net(leaf), x.shape[0], type(model).__name__)
    return leaf, logits, list(sites)


@contextmanager
def _null() -> Iterator[None]:
    yield
