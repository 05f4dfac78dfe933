"""What every layer shares: argument checks, the uncertainty kinds and per-map scaling.

Checks raise errors that name what is wrong and what was expected. This module sits below every
other layer of the package (it imports torch only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

__all__ = [
    "ALL_UNCERTAINTY_KINDS",
    "EVIDENTIAL_UNCERTAINTY_KINDS",
    "UNCERTAINTY_KINDS",
    "UncertaintyKind",
    "check_choice",
    "check_images",
    "check_optional_positive_int",
    "check_positive_int",
    "check_uncertainty_name",
    "minmax_scale",
]

#: The kinds every Bayesian posterior defines (nats): total = aleatoric + epistemic.
UNCERTAINTY_KINDS: tuple[str, ...] = ("total", "aleatoric", "epistemic")
#: An evidential (Dirichlet) model adds vacuity u = K / S.
EVIDENTIAL_UNCERTAINTY_KINDS: tuple[str, ...] = (*UNCERTAINTY_KINDS, "vacuity")
#: Every uncertainty kind a target may name.
ALL_UNCERTAINTY_KINDS: tuple[str, ...] = EVIDENTIAL_UNCERTAINTY_KINDS
UncertaintyKind = Literal["total", "aleatoric", "epistemic", "vacuity"]


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int (not a bool) >= ``minimum``; else raise a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


def check_optional_positive_int(value: Any, name: str) -> int | None:
    """:func:`check_positive_int`, with ``None`` allowed (and returned)."""
    return None if value is None else check_positive_int(value, name)


def check_choice(value: Any, allowed: Sequence[Any], name: str) -> Any:
    """Return ``value`` if it is one of ``allowed``; else raise a ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")
    return value


def check_uncertainty_name(kind: Any, name: str = "uncertainty") -> str:
    """Return ``kind`` if it names an uncertainty kind (any model's); else raise a ValueError."""
    if not isinstance(kind, str) or kind not in ALL_UNCERTAINTY_KINDS:
        raise ValueError(
            f"unknown {name} {kind!r}: use one of {', '.join(ALL_UNCERTAINTY_KINDS)}."
        )
    return kind


def minmax_scale(values: torch.Tensor, dims: int = 2) -> torch.Tensor:
    """Min-max scale each map over its last ``dims`` dimensions to [0, 1], same shape.

    A constant map becomes 0 (instead of 0 / 0). ``values`` [..., H, W] with ``dims=2`` scales
    every [H, W] map on its own.
    """
    flat = values.flatten(-dims)
    lo, hi = torch.aminmax(flat, dim=-1, keepdim=True)
    span = hi - lo
    factor = torch.where(span > 0, 1.0 / span.clamp_min(torch.finfo(values.dtype).tiny), 0.0)
    return ((flat - lo) * factor).view_as(values)


def check_images(
    x: torch.Tensor, channels: int | None = None, name: str = "images"
) -> torch.Tensor:
    """Check that ``x`` is a finite float image batch ``[B, C, H, W]`` and return it unchanged.

    Args:
        x: the batch to check.
        channels: the channel count the model expects; ``None`` skips that check.
        name: how the error messages call ``x``.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: wrong rank, empty batch, wrong channel count, or NaN/Inf values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape [B, C, H, W], got {type(x).__name__}."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}. "
            "Convert with x.float() / 255 if these are raw uint8 pixels."
        )
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape [B, C, H, W], got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); nothing to process.")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channel(s) but the model expects {channels} "
            f"(shape {tuple(x.shape)}). Check the data module and the model's in_channels."
        )
    # A finite sum means every value is finite (one reduction, no mask); an infinite sum from
    # large finite values falls through to the exact check.
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(
            f"{name} contains NaN or Inf values (in batch rows {bad[:10]}"
            f"{'...' if len(bad) > 10 else ''}). Clean the data before training or attribution."
        )
    return x
