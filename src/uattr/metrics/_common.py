"""Helpers shared by the metric modules: input checks, model scores, batching, pixel orders."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from uattr.common import ALL_UNCERTAINTY_KINDS, check_images
from uattr.modes import evaluating

UncertaintyFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
ProbabilityFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def percent(p: float) -> str:
    """``0.02 -> "2%"``, ``0.025 -> "2.5%"``: the suffix of the metric keys."""
    return f"{p * 100:g}%"


def check_maps(
    maps: torch.Tensor, x: torch.Tensor | None = None, name: str = "maps"
) -> torch.Tensor:
    """Check that ``maps`` is a finite float [B, H, W] tensor matching images ``x`` [B, C, H, W]."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape [B, H, W], got {type(maps).__name__}."
        )
    if maps.dim() != 3:
        raise ValueError(f"{name} must have shape [B, H, W], got shape {tuple(maps.shape)}.")
    if maps.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(maps.shape)}); nothing to score.")
    if x is not None and maps.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(
            f"{name} of shape {tuple(maps.shape)} do not match the images of shape "
            f"{tuple(x.shape)}: expected [B, H, W] = {(x.shape[0], *x.shape[2:])}."
        )
    if not maps.is_floating_point():
        maps = maps.float()
    if not torch.isfinite(maps).all():
        raise ValueError(
            f"{name} contain NaN or Inf values; the attribution method failed on this batch."
        )
    return maps


def check_images_and_maps(x: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate an image batch [B, C, H, W] and its maps [B, H, W] (same device as ``x``)."""
    check_images(x)
    maps = check_maps(maps, x).to(x.device)
    return x, maps


def check_labels(
    target: torch.Tensor, batch_size: int, num_classes: int, name: str = "target"
) -> torch.Tensor:
    """Check class indices [B] in [0, num_classes) and return them as a LongTensor."""
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex():
        raise TypeError(
            f"{name} must be an integer tensor of class indices [B], got {target!r:.80}."
        )
    if target.shape != (batch_size,):
        raise ValueError(f"{name} must have shape [B] = [{batch_size}], got {tuple(target.shape)}.")
    if batch_size and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(
            f"{name} has classes {target.min().item()}..{target.max().item()}, "
            f"but there are only {num_classes} classes (0..{num_classes - 1})."
        )
    return target.long()


def resolve_uncertainty(kind: str | UncertaintyFn) -> UncertaintyFn:
    """An uncertainty kind (``"total"`` ...) or a callable ``(model, x) -> [B]``, as a callable.

    A kind uses :func:`uattr.bayes.posterior.uncertainty` (nats, fixed posterior samples, so the
    same image always gets the same value); it is imported on first use.
    """
    if callable(kind):
        return kind
    if kind not in ALL_UNCERTAINTY_KINDS:
        raise ValueError(
            f"unknown uncertainty {kind!r}: use one of {', '.join(ALL_UNCERTAINTY_KINDS)} or a "
            "callable (model, x [B, C, H, W]) -> Tensor[B]."
        )

    def fn(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        from uattr.bayes.posterior import uncertainty

        return uncertainty(model, x, kind)

    return fn


def predictive_probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Posterior-mean probabilities [B, K]: ``uattr.bayes.posterior.predictive_distribution``."""
    from uattr.bayes.posterior import predictive_distribution

    return predictive_distribution(model, x)


def evaluate_chunks(
    model: nn.Module,
    fn: Callable[..., torch.Tensor],
    chunks: Iterable[torch.Tensor | tuple[torch.Tensor, ...]],
) -> torch.Tensor:
    """``cat([fn(model, *chunk) for chunk in chunks])`` in eval mode under ``no_grad`` (float64).

    A chunk is an image batch or a tuple (image batch, extra arguments...). Every submodule's
    train/eval flag is restored afterwards; posterior wrappers apply their own fixed dropout masks /
    members, so the values are deterministic.
    """
    outs = []
    with evaluating(model), torch.no_grad():
        for chunk in chunks:
            args = chunk if isinstance(chunk, tuple) else (chunk,)
            out = fn(model, *args)
            if (
                not isinstance(out, torch.Tensor)
                or out.dim() == 0
                or out.shape[0] != args[0].shape[0]
            ):
                raise RuntimeError(
                    f"the model score returned {getattr(out, 'shape', type(out).__name__)} for "
                    f"{args[0].shape[0]} images; expected one value (or row) per image."
                )
            outs.append(out.detach().to(torch.float64))
    return torch.cat(outs)


def index_batches(total: int, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """The indices 0 .. total - 1 as consecutive LongTensors of at most ``batch_size``.

    The perturbation tests enumerate their (image, step) copies by one flat index and build one
    chunk of copies per batch of indices, so only ``batch_size`` copies exist at a time.
    """
    for start in range(0, total, batch_size):
        yield torch.arange(start, min(start + batch_size, total), device=device)


def tie_break_ranks(values: torch.Tensor, seed: int, descending: bool = True) -> torch.Tensor:
    """The rank (0 = first) of every entry of ``values`` [B, N] when sorted, ties broken at random.

    Ties are broken by one seeded random permutation of the N positions, the same for every row, so
    a row's order depends only on that row and the seed (batch composition does not matter). The
    values themselves are never perturbed.
    """
    n = values.shape[1]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen).to(values.device)
    order_in_perm = torch.sort(values[:, perm], dim=1, descending=descending, stable=True).indices
    order = perm[order_in_perm]  # order[b, r] = position of the r-th entry
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=values.device).expand_as(order))
    return ranks


def tile_ids(
    height: int, width: int, tile_size: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """(tile index of every pixel [H * W], tile count); row-major, edge tiles may be smaller."""
    side = min(height, width)
    if not 1 <= tile_size <= side:
        raise ValueError(f"tile_size must be between 1 and the image side {side}, got {tile_size}.")
    nth, ntw = math.ceil(height / tile_size), math.ceil(width / tile_size)
    rows = torch.arange(height, device=device) // tile_size
    cols = torch.arange(width, device=device) // tile_size
    return (rows[:, None] * ntw + cols[None, :]).flatten(), nth * ntw


def minmax_rows(values: torch.Tensor) -> torch.Tensor:
    """Min-max scale each row of ``values`` [B, N] to [0, 1] in float64; a constant row -> 0.

    Unlike :func:`uattr.common.minmax_scale` (which multiplies by 1 / span) this divides by the
    span, as the SSIM and Dice scores always have; the two differ in the last bit, which can move a
    value across a Dice threshold.
    """
    flat = values.double()
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return torch.where(hi > lo, (flat - lo) / (hi - lo).clamp_min(1e-300), torch.zeros_like(flat))
