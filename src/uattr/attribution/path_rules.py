"""The paths of the path methods: quadrature rules on [0, 1] (Integrated Gradients) and the
Gaussian blur of Blur IG (PAIR-code/saliency's zero-padded scipy kernel)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["gaussian_blur", "integration_rule"]


def integration_rule(method: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points a_k in [0, 1] and weights w_k (summing to 1) of a quadrature rule, float64 [steps].

    ``riemann_trapezoid``: a_k = k/(steps-1), w = 1/(steps-1) with halved end weights (captum
    0.9's rule of this name uses w = 1/steps on these points, whose weights sum to 1 - 1/steps: a
    1/steps bias in completeness, so it is not reused). ``riemann_left/right/middle``: a_k =
    k/steps, (k+1)/steps, (k+1/2)/steps with w = 1/steps. ``gausslegendre``: Gauss-Legendre nodes
    mapped to [0, 1].
    """
    k = torch.arange(steps, dtype=torch.float64)
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("riemann_trapezoid needs steps >= 2 (both end points).")
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return k / (steps - 1), weights
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (k + offset) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)


def _gaussian_kernels(sigma: torch.Tensor, truncate: float) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels [N, 2R+1] for sigmas [N] (float64), as scipy.ndimage.

    Row n has radius ``int(truncate * sigma_n + 0.5)`` (zeros beyond it); sigma 0 is the identity.
    R is the largest radius.
    """
    radii = (truncate * sigma + 0.5).floor().long()
    r = int(radii.max())
    offsets = torch.arange(-r, r + 1, dtype=torch.float64, device=sigma.device)
    safe = sigma.clamp_min(1e-12)[:, None]
    k = torch.exp(-0.5 * (offsets[None] / safe) ** 2)
    k = torch.where(offsets[None].abs() <= radii[:, None], k, torch.zeros_like(k))
    return k / k.sum(1, keepdim=True)


def gaussian_blur(
    x: torch.Tensor, sigma: float | torch.Tensor, truncate: float = 4.0
) -> torch.Tensor:
    """Spatial Gaussian blur with zero padding, the blur PAIR's Blur IG uses.

    Matches ``scipy.ndimage.gaussian_filter(img, sigma=[s, s, 0], mode="constant")`` on each
    [H, W, C] image: a separable kernel of radius ``int(truncate * s + 0.5)``, values outside the
    image taken as 0 (so blurring darkens borders of images that are not black there).

    Args:
        x: images [N, C, H, W].
        sigma: one standard deviation in pixels, or one per image [N]; 0 leaves the image as is.
        truncate: kernel radius in standard deviations (scipy's default 4).

    Returns:
        blurred images [N, C, H, W], same dtype; differentiable w.r.t. ``x``.
    """
    n, c, h, w = x.shape
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(n)
    if (sigma < 0).any() or not torch.isfinite(sigma).all():
        raise ValueError(f"sigma must be finite and >= 0, got {sigma.tolist()[:5]}.")
    kernel = _gaussian_kernels(sigma, truncate).to(x.dtype)
    r = (kernel.shape[1] - 1) // 2
    if r == 0:
        return x
    # One group per (image, channel): each image is blurred with its own kernel.
    weight = kernel.repeat_interleave(c, dim=0)
    flat = x.reshape(1, n * c, h, w)
    flat = nn.functional.conv2d(flat, weight[:, None, :, None], padding=(r, 0), groups=n * c)
    flat = nn.functional.conv2d(flat, weight[:, None, None, :], padding=(0, r), groups=n * c)
    return flat.reshape(n, c, h, w)
