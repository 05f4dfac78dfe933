"""Input checks shared by every layer: errors that name what is wrong and what was expected."""

from __future__ import annotations

import torch

__all__ = ["check_images"]


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
