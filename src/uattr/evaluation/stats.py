"""Image subsets and per-image statistics shared by the protocols."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["above_median", "json_floats", "mean_and_se", "paired_differences", "seeded_subset"]


def seeded_subset(candidates: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """At most ``n`` of the ``candidates`` (indices), a seeded random choice, kept in order."""
    if candidates.numel() <= n:
        return candidates
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(candidates.numel(), generator=gen)[:n]
    return candidates[pick.sort().values]


def above_median(u: torch.Tensor) -> torch.Tensor:
    """Indices of the values at or above the median (numpy's median), the blurring-test rule."""
    return (u >= torch.quantile(u, 0.5)).nonzero().flatten()


def mean_and_se(values: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """``{key: {"mean", "se"}}`` of per-image values (se: the standard error, NaN for one)."""
    out = {}
    for k, v in values.items():
        n = v.numel()
        se = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
        out[k] = {"mean": float(v.mean()) if n else float("nan"), "se": se}
    return out


def paired_differences(values: dict[str, dict[str, torch.Tensor]],
                       firsts: tuple[str, ...]) -> dict[str, Any]:
    """Each row of ``firsts`` minus every other row, image by image (the same images for all).

    ``{"<first> - <other>": {metric: {"mean", "se"}}}``: the paired standard error is far smaller
    than the per-row ones when rows are compared on the same images.
    """
    out: dict[str, Any] = {}
    for first in firsts:
        if first not in values:
            continue
        for other, v in values.items():
            if other == first:
                continue
            out[f"{first} - {other}"] = mean_and_se(
                {k: values[first][k] - v[k] for k in values[first]}
            )
    return out


def json_floats(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with one-element tensors as floats and other tensors as lists (recursively)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = json_floats(v)
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, torch.Tensor):
            out[k] = v.tolist()
        else:
            out[k] = v
    return out
