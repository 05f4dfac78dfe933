"""Deterministic image perturbations for shifted-data evaluation and anomaly localisation.

Every perturbation takes one image ``[C, H, W]`` or a batch ``[B, C, H, W]`` (float, values in
[0, 1]) and returns the same shape. ``index`` names the item: for one image its dataset index, for
a batch the index of its first item (item ``b`` gets ``index + b``) or a LongTensor ``[B]`` of
indices.
Seeded perturbations draw their randomness from ``(seed, index)`` only, so a dataset item gets the
same noise or patch in every epoch, on every DataLoader worker and every DDP rank, and a batch call
equals a loop over its items.

Use them on a dataset with :class:`PerturbedDataset`, or hand one to a data module's
``perturbation`` argument (applied to the val and test sets).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

__all__ = [
    "AnomalyPatch",
    "GaussianBlur",
    "GaussianNoise",
    "PerturbedDataset",
    "Perturbation",
    "Rotation",
]


def _item_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, index)``.

    ``SeedSequence`` hashes the pair, so nearby pairs such as ``(0, 1)`` and ``(1, 0)`` give
    unrelated streams (a plain ``seed * K + index`` would collide).
    """
    if index < 0:
        raise ValueError(f"item index must be >= 0, got {index}.")
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _check_seed(seed: int) -> int:
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    return seed


class Perturbation:
    """Base class: a deterministic perturbation of one image or a batch of images.

    Subclasses implement :meth:`perturb` on a batch; :meth:`__call__` handles the single-image case,
    the input checks and the item indices.
    """

    def __call__(self, x: torch.Tensor, index: int | torch.Tensor = 0) -> Any:
        """Perturb ``x``.

        Args:
            x: one image ``[C, H, W]`` or a batch ``[B, C, H, W]``, float in [0, 1].
            index: the dataset index of ``x`` (of its first item for a batch), or a LongTensor
                ``[B]`` with one index per batch item.

        Returns:
            the perturbed image(s), same shape and dtype as ``x`` (subclasses may add outputs,
            see :class:`AnomalyPatch`).
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} expects a float image tensor in [0, 1], got "
                f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}."
            )
        if x.dim() not in (3, 4):
            raise ValueError(
                f"{type(self).__name__} expects one image [C, H, W] or a batch [B, C, H, W], "
                f"got shape {tuple(x.shape)}."
            )
        single = x.dim() == 3
        batch = x.unsqueeze(0) if single else x
        out = self.perturb(batch, _item_indices(index, batch.shape[0]))
        if not single:
            return out
        if isinstance(out, tuple):
            return tuple(o[0] for o in out)
        return out[0]

    def perturb(self, x: torch.Tensor, indices: list[int]) -> Any:
        """Perturb a batch ``x`` ``[B, C, H, W]`` whose items have dataset indices ``indices``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _item_indices(index: int | torch.Tensor, batch_size: int) -> list[int]:
    if isinstance(index, torch.Tensor):
        if index.dim() == 0:
            index = int(index)
        else:
            if index.shape != (batch_size,):
                raise ValueError(
                    f"index must be an int or a tensor of shape [B] = [{batch_size}], "
                    f"got shape {tuple(index.shape)}."
                )
            return [int(i) for i in index.tolist()]
    return [int(index) + b for b in range(batch_size)]


class Rotation(Perturbation):
    """Rotate counter-clockwise by ``angle`` degrees about the image centre, filling with 0.

    Multiples of 90 degrees are exact (``torch.rot90``; for an odd multiple on a non-square image,
    which rot90 would reshape, torchvision's rotate with the shape kept and corners cropped).
    Other angles use torchvision's ``rotate`` with ``interpolation`` and keep the shape.

    Args:
        angle: degrees, counter-clockwise (as torchvision and ``torch.rot90`` on ``dims=(-2, -1)``).
        interpolation: resampling for angles that are not multiples of 90.
    """

    def __init__(
        self, angle: float, interpolation: Literal["nearest", "bilinear"] = "bilinear"
    ) -> None:
        if not math.isfinite(angle):
            raise ValueError(f"angle must be a finite number of degrees, got {angle}.")
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(
                f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}."
            )
        self.angle = float(angle)
        self.interpolation = interpolation

    def perturb(self, x: torch.Tensor, indices: list[int]) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.angle % 90 == 0:
            k = int(self.angle // 90) % 4
            if k % 2 == 0 or height == width:
                return torch.rot90(x, k, dims=(-2, -1)).contiguous()
        mode = TF.InterpolationMode(self.interpolation)
        return TF.rotate(x, self.angle, interpolation=mode, expand=False, fill=None)


class GaussianNoise(Perturbation):
    """Add seeded Gaussian noise ``N(0, std^2)`` to every pixel and channel.

    The noise of an item depends only on ``(seed, index)``.

    Args:
        std: standard deviation in pixel units (images live in [0, 1]).
        seed: non-negative seed.
        clip: clamp the result to [0, 1].
    """

    def __init__(self, std: float, seed: int = 0, clip: bool = True) -> None:
        if not (math.isfinite(std) and std >= 0):
            raise ValueError(f"std must be a finite number >= 0, got {std}.")
        self.std = float(std)
        self.seed = _check_seed(seed)
        self.clip = clip

    def perturb(self, x: torch.Tensor, indices: list[int]) -> torch.Tensor:
        noise = torch.stack(
            [torch.randn(x.shape[1:], generator=_item_generator(self.seed, i)) for i in indices]
        )
        out = x + self.std * noise.to(device=x.device, dtype=x.dtype)
        return out.clamp(0.0, 1.0) if self.clip else out


class GaussianBlur(Perturbation):
    """Blur each channel with a Gaussian kernel (torchvision's ``gaussian_blur``, reflect padding).

    Reflect padding keeps a constant image constant, so the blur preserves its mean.

    Args:
        sigma: standard deviation in pixels; 0 returns the input unchanged.
        kernel_size: odd kernel side; default ``2 * ceil(3 * sigma) + 1`` (covers +-3 sigma).
            Its half-width must be smaller than the image side (reflect padding).
    """

    def __init__(self, sigma: float, kernel_size: int | None = None) -> None:
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma}.")
        if kernel_size is None:
            kernel_size = 2 * math.ceil(3 * sigma) + 1
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}.")
        self.sigma = float(sigma)
        self.kernel_size = int(kernel_size)

    def perturb(self, x: torch.Tensor, indices: list[int]) -> torch.Tensor:
        if self.sigma == 0 or self.kernel_size == 1:
            return x.clone()
        half = self.kernel_size // 2
        if half >= min(x.shape[-2:]):
            raise ValueError(
                f"GaussianBlur kernel_size={self.kernel_size} (sigma={self.sigma}) is too large "
                f"for {tuple(x.shape[-2:])} images: reflect padding needs kernel_size // 2 < "
                "the image side. Use a smaller sigma or pass a smaller kernel_size."
            )
        return TF.gaussian_blur(x, [self.kernel_size] * 2, [self.sigma] * 2)


class AnomalyPatch(Perturbation):
    """Paste a ``size x size`` patch at a seeded random position fully inside the image.

    Calling it returns ``(image, box)``: for one image ``box`` is a LongTensor ``[4]``, for a
    batch ``[B, 4]``, as ``(x_min, y_min, x_max, y_max)`` in pixels with the max EXCLUSIVE (the
    patch covers columns ``x_min .. x_max - 1`` and rows ``y_min .. y_max - 1``). The position
    (uniform over all positions that fit) and the noise depend only on ``(seed, index)``.

    UA-Backprop's anomaly protocol is only in its supplement (Wang et al., CVPR 2023), so the patch
    content is a choice (UNCONFIRMED): uniform noise, as in this project's first measurements on
    MNIST (a 7x7 noise square).

    Args:
        size: patch side in pixels (7 is a quarter of a 28-pixel MNIST side; use 8 for 32x32).
        seed: non-negative seed.
        fill: ``"noise"`` (i.i.d. uniform [0, 1] per pixel and channel), ``"white"`` (1.0) or a
            constant in [0, 1].
    """

    def __init__(
        self, size: int = 7, seed: int = 0, fill: Literal["noise", "white"] | float = "noise"
    ) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}.")
        if isinstance(fill, str):
            if fill not in ("noise", "white"):
                raise ValueError(
                    f"fill must be 'noise', 'white' or a float in [0, 1], got {fill!r}."
                )
        elif not 0.0 <= float(fill) <= 1.0:
            raise ValueError(f"a constant fill must lie in [0, 1], got {fill}.")
        self.size = size
        self.seed = _check_seed(seed)
        self.fill = fill if isinstance(fill, str) else float(fill)

    def perturb(self, x: torch.Tensor, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        channels, height, width = x.shape[1:]
        s = self.size
        if s > min(height, width):
            raise ValueError(
                f"AnomalyPatch size={s} does not fit in {height}x{width} images; "
                "use a size no larger than the image side."
            )
        out = x.clone()
        boxes = torch.empty(len(indices), 4, dtype=torch.long)
        for b, i in enumerate(indices):
            g = _item_generator(self.seed, i)
            x0 = int(torch.randint(0, width - s + 1, (), generator=g))
            y0 = int(torch.randint(0, height - s + 1, (), generator=g))
            if self.fill == "noise":
                patch = torch.rand(channels, s, s, generator=g).to(x.device, x.dtype)
                out[b, :, y0 : y0 + s, x0 : x0 + s] = patch
            else:
                out[b, :, y0 : y0 + s, x0 : x0 + s] = 1.0 if self.fill == "white" else self.fill
            boxes[b] = torch.tensor([x0, y0, x0 + s, y0 + s])
        return out, boxes.to(x.device)


class PerturbedDataset(Dataset):
    """Wrap a dataset of ``(image [C, H, W], label, ...)`` items and perturb each image.

    Item ``i`` is perturbed with ``index=i``, so it is the same in every epoch. Items are
    ``(perturbed image, label)``, or ``(image, label, box)`` with ``box`` LongTensor ``[4]`` when
    the perturbation returns a box (:class:`AnomalyPatch`); the default collate stacks boxes to
    ``[B, 4]``.
    """

    def __init__(self, dataset: Dataset, perturbation: Perturbation) -> None:
        if not callable(perturbation):
            raise TypeError(f"perturbation must be callable, got {type(perturbation).__name__}.")
        self.dataset = dataset
        self.perturbation = perturbation

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if index < 0:
            index += len(self)
        image, label = self.dataset[index][:2]
        out = self.perturbation(image, index=index)
        if isinstance(out, tuple):
            return (out[0], label, *out[1:])
        return out, label
