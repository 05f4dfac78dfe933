"""Seeded, stratified train/val/test splits of a labelled dataset.

Each class is shuffled on its own with a generator seeded by ``split_seed`` and cut into parts;
every part is then shuffled as a whole, so an unshuffled val/test loader does not walk through the
classes one after another (its first batch, e.g. an attribution probe set, mixes all classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["balanced_split", "random_split_indices", "stratified_split"]


def _split_by_counts(labels: torch.Tensor, counts: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Cut each class ``c`` into parts of ``counts[c, p]`` items (``counts``: ``[C, P]``)."""
    g = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(counts.shape[1])]
    for c in range(counts.shape[0]):
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        start = 0
        for p, n in enumerate(counts[c].tolist()):
            parts[p].append(members[start : start + n])
            start += n
    out = []
    for pieces in parts:
        idx = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)
        out.append(idx[torch.randperm(len(idx), generator=g)])
    return out


def balanced_split(
    labels: torch.Tensor, sizes: Sequence[int], num_classes: int, seed: int = 0
) -> list[torch.Tensor]:
    """Split into parts of exactly ``sizes[p]`` items with ``sizes[p] / num_classes`` per class.

    Args:
        labels: LongTensor ``[N]`` with values in ``0 .. num_classes - 1``.
        sizes: the part sizes; each must be divisible by ``num_classes``.
        num_classes: the number of classes.
        seed: the split seed.

    Returns:
        one LongTensor of dataset indices per part, disjoint.

    Raises:
        ValueError: a size is negative or not divisible by ``num_classes``, or a class has fewer
            than ``sum(sizes) / num_classes`` items.
    """
    for n in sizes:
        if n < 0 or n % num_classes:
            raise ValueError(
                f"split sizes {tuple(sizes)} must be non-negative multiples of the {num_classes} "
                f"classes, so that every class gets an equal share of each part; {n} is not."
            )
    per_class = torch.tensor([n // num_classes for n in sizes], dtype=torch.long)
    available = torch.bincount(labels, minlength=num_classes)
    if (available < per_class.sum()).any():
        raise ValueError(
            f"split sizes {tuple(sizes)} need {int(per_class.sum())} items per class, but the "
            f"smallest class has {int(available.min())}."
        )
    return _split_by_counts(labels, per_class.expand(num_classes, -1), seed)


def stratified_split(
    labels: torch.Tensor, fractions: Sequence[float], num_classes: int, seed: int = 0
) -> list[torch.Tensor]:
    """Split every class by ``fractions``: class ``c`` with ``n_c`` items gives ``round(f * n_c)``.

    The first part (train) takes what is left of each class after the later parts: all of it when
    the fractions sum to 1 (no item is lost to rounding), else at most
    ``round(fractions[0] * n_c)``.

    Args:
        labels: LongTensor ``[N]`` with values in ``0 .. num_classes - 1``.
        fractions: non-negative part fractions summing to at most 1 (e.g. ``(0.8, 0.1, 0.1)``).
        num_classes: the number of classes.
        seed: the split seed.

    Returns:
        one LongTensor of dataset indices per part, disjoint.
    """
    if any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(
            f"split fractions {tuple(fractions)} must be non-negative and sum to at most 1."
        )
    available = torch.bincount(labels, minlength=num_classes).tolist()
    whole = abs(sum(fractions) - 1) < 1e-9
    counts = []
    for n_c in available:
        rest, left = [], n_c
        for f in fractions[1:]:
            rest.append(min(round(f * n_c), left))
            left -= rest[-1]
        first = left if whole else min(round(fractions[0] * n_c), left)
        counts.append([first, *rest])
    return _split_by_counts(labels, torch.tensor(counts, dtype=torch.long), seed)


def random_split_indices(n: int, holdout: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded permutation of ``range(n)`` cut into ``(n - holdout, holdout)`` index sets."""
    if not 0 <= holdout < n:
        raise ValueError(f"cannot hold out {holdout} of {n} items; need 0 <= holdout < {n}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:], perm[:holdout]
