"""The bottleneck's information maths: capacity per element, mask smoothing, the heat map in bits.

Schulz, Sixt, Tombari & Landgraf, "Restricting the Flow: Information Bottlenecks for Attribution",
ICLR 2020. With lambda the mask and r' = (R - mu_R) / sigma_R the normalised features, the
information that Z = lambda R + (1 - lambda) eps keeps about R is, per element (nats),

    C = KL( N(lambda r', (1 - lambda)^2) || N(0, 1) )
      = -1/2 * (1 + ln (1 - lambda)^2 - (lambda r')^2 - (1 - lambda)^2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["capacity", "capacity_map", "gaussian_smoothing"]


def capacity(r_norm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Per-element capacity C = KL(N(lam r', (1-lam)^2) || N(0, 1)) in nats (Schulz et al. 2020).

    Args:
        r_norm: normalised features r' = (R - mu_R) / sigma_R.
        lam: the mask lambda in [0, 1], broadcastable to ``r_norm``.

    Returns:
        The capacity, broadcast shape, >= 0. At lam = sigmoid(5), r' = 0: 4.5067 nats = 6.5019
        bits. ``1 - lam`` is floored at the dtype's smallest normal number so lam = 1 gives a large
        finite value (about 87 nats in float32) instead of inf.
    """
    one_minus = (1 - lam).clamp_min(torch.finfo(lam.dtype).tiny)
    var = one_minus * one_minus
    kl = -0.5 * (1 + 2 * torch.log(one_minus) - (lam * r_norm) ** 2 - var)
    return kl.clamp_min(0.0)  # >= 0 analytically; the clamp only removes rounding below 0


def gaussian_smoothing(lam: torch.Tensor, sigma: float) -> torch.Tensor:
    """Depthwise 2-D Gaussian smoothing of a mask [B, C, h, w] (the IBA library's kernel).

    Kernel size ``2 * round(2 * sigma) + 1`` (5 for sigma = 1), normalised to sum 1, reflection
    padding (replicate padding when the map is too small to reflect, e.g. 2 x 2). ``sigma = 0``
    returns ``lam`` unchanged. Each image and channel is smoothed on its own.
    """
    if sigma <= 0:
        return lam
    size = 2 * round(2 * sigma) + 1
    if size == 1:
        return lam
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = torch.outer(g, g)
    kernel = (kernel / kernel.sum()).to(device=lam.device, dtype=lam.dtype)
    channels = lam.shape[1]
    pad = size // 2
    mode = "reflect" if pad < lam.shape[-2] and pad < lam.shape[-1] else "replicate"
    padded = F.pad(lam, (pad, pad, pad, pad), mode=mode)
    return F.conv2d(padded, kernel.expand(channels, 1, size, size), groups=channels)


def capacity_map(cap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Heat map in bits from per-element capacities (the IBA library's ``_to_saliency_map``).

    Args:
        cap: capacity [B, C, h, w] in nats.
        size: the image size (H, W).

    Returns:
        [B, H, W]: capacity summed over channels, divided by ln 2, multiplied by (h w) / (H W) so
        the map sums (before interpolation) to the total bits, then resized bilinearly
        (``align_corners=False``, the half-pixel convention of skimage/cv2). >= 0.
    """
    h, w = cap.shape[-2:]
    bits = cap.sum(1, keepdim=True) / math.log(2) * (h * w) / (size[0] * size[1])
    return F.interpolate(bits, size=size, mode="bilinear", align_corners=False)[:, 0]
