"""Sensitivity-n (Ancona et al. ICLR 2018), with the mechanics of IBA's ``eval_sensitivity_n.py``.

For random sets of n pixels (or tiles), the sum of the attributions over the set should equal the
drop of the target output when the set is removed. Sensitivity-n is the Pearson correlation between
the two, over random sets and images; it is 1 for every n exactly when the attribution is additive
in the removed sets (e.g. x * w for a linear model with a zero baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric

from uattr.common import check_positive_int
from uattr.metrics._common import (
    check_images_and_maps,
    check_labels,
    evaluate_chunks,
    index_batches,
    predictive_probabilities,
    tile_ids,
)

__all__ = ["SensitivityN", "sensitivity_n_samples"]

OutputFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _class_logit(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target-class logit (mean over posterior samples), as ``attribution.base.class_score``."""
    from uattr.attribution.base import class_score

    return class_score(model, x, target)


def _random_tile_masks(num_tiles: int, n: int, num_masks: int, seed: int) -> torch.Tensor:
    """``num_masks`` random sets of ``n`` of the ``num_tiles`` tiles, bool [num_masks, num_tiles].

    The generator is seeded by (seed, n) only, so the sets are shared by every image (as IBA) and do
    not depend on the other n values or on the batches.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + n)
    chosen = torch.rand(num_masks, num_tiles, generator=gen).argsort(1)[:, :n]
    return torch.zeros(num_masks, num_tiles, dtype=torch.bool).scatter_(1, chosen, True)


def sensitivity_n_samples(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    n_values: Sequence[int],
    target: torch.Tensor | None = None,
    num_masks: int = 100,
    tile_size: int = 1,
    baseline: float = 0.0,
    output: OutputFn | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(attribution sums, output drops), each float64 [B, len(n_values), num_masks].

    ``sums[b, i, j]`` = sum of ``maps[b]`` over the j-th random set of ``n_values[i]`` tiles;
    ``drops[b, i, j]`` = f(x_b) - f(x_b with those tiles set to ``baseline``), with
    f = ``output(model, x, target) -> [B]`` (default: the target-class logit, the mean over
    posterior samples). ``target`` defaults to the class predicted on the original image. See
    :class:`SensitivityN`.
    """
    x, maps = check_images_and_maps(x, maps)
    check_positive_int(batch_size, "batch_size")
    b, c, h, w = x.shape
    tile_id, num_tiles = tile_ids(h, w, tile_size, x.device)
    too_big = [n for n in n_values if not 1 <= n <= num_tiles]
    if too_big:
        raise ValueError(
            f"n_values {too_big} are outside 1..{num_tiles}, the number of {tile_size}x{tile_size} "
            f"tiles of a {h}x{w} image; pass smaller n_values."
        )
    output = output or _class_logit
    if target is None:
        target = evaluate_chunks(model, predictive_probabilities, [x]).argmax(1)
    target = target.to(x.device)
    tiles = torch.cat([_random_tile_masks(num_tiles, n, num_masks, seed) for n in n_values]).to(
        x.device
    )
    pixel_masks = tiles[:, tile_id]  # [L * J, HW]
    sums = maps.flatten(1).double() @ pixel_masks.double().T  # [B, L * J]
    lj = pixel_masks.shape[0]
    total = b * lj
    fill = torch.tensor(baseline, dtype=x.dtype, device=x.device)

    def chunks():
        yield x, target
        for idx in index_batches(total, batch_size, x.device):
            img, k = idx // lj, idx % lj
            mask = pixel_masks[k].view(-1, 1, h, w)
            yield torch.where(mask, fill, x[img]), target[img]

    out = evaluate_chunks(model, output, chunks())
    if out.dim() != 1:
        raise RuntimeError(
            f"output must return one value per image [B], got shape {tuple(out.shape)}."
        )
    f0, fm = out[:b], out[b:].view(b, lj)
    shape = (b, len(n_values), num_masks)
    return sums.view(shape), (f0[:, None] - fm).view(shape)


class SensitivityN(Metric):
    """Sensitivity-n (Ancona et al. 2018): Pearson correlation of attribution sums and output drops.

    ``update(model, x [B, C, H, W], maps [B, H, W], target=None)``. For each n in ``n_values``,
    ``num_masks`` random sets of n tiles (``tile_size`` 1 = pixels) are drawn once per (seed, n) and
    shared by all images (as IBA's script); each set is set to ``baseline`` (default 0, i.e. black;
    IBA zeroed the *normalised* input, i.e. the dataset-mean colour: a choice here) and the drop
    f(x) - f(x_masked) of the target output is paired with the sum of the map over the set. f is
    the target-class logit (IBA used logits; for a posterior wrapper the mean logit over its fixed
    samples) or any ``output(model, x, target) -> [B]``; ``target`` defaults to the class
    predicted on the original. Perturbed copies are scored under ``no_grad`` in batches of
    ``batch_size``.

    ``compute()`` -> for each n: ``"sensitivity@{n}"``, the Pearson correlation over all (image,
    set) pairs pooled (IBA's ``np.corrcoef`` over 1000 images x 100 sets), and
    ``"sensitivity_image_mean@{n}"``, the per-image correlation over the sets averaged over images
    (images whose sums or drops are constant are left out). Both are kept as running sums, so
    batches and DDP ranks combine exactly. Default ``n_values`` (powers of two up to 512, for
    28x28 / 32x32 images) and ``num_masks`` 100 (IBA) are choices; IBA used 16 log-spaced n up to
    80% of the tiles.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        n_values: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        num_masks: int = 100,
        seed: int = 0,
        tile_size: int = 1,
        baseline: float = 0.0,
        output: OutputFn | None = None,
        batch_size: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        n_values = tuple(int(n) for n in n_values)
        if not n_values or min(n_values) < 1 or len(set(n_values)) != len(n_values):
            raise ValueError(f"n_values must be distinct positive integers, got {n_values}.")
        self.n_values = n_values
        # Two sets at least, to define a correlation per image.
        self.num_masks = check_positive_int(num_masks, "num_masks", minimum=2)
        self.seed = seed
        self.tile_size = tile_size
        self.baseline = baseline
        self.output = output
        self.batch_size = check_positive_int(batch_size, "batch_size")
        zeros = torch.zeros(len(n_values), dtype=torch.float64)
        for name in ("sum_a", "sum_d", "sum_aa", "sum_dd", "sum_ad", "corr_sum"):
            self.add_state(name, zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state(
            "corr_count", torch.zeros(len(n_values), dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(
        self,
        model: nn.Module,
        x: torch.Tensor,
        maps: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> None:
        if target is not None:
            target = check_labels(target, x.shape[0], torch.iinfo(torch.long).max)
        a, d = sensitivity_n_samples(
            model,
            x,
            maps,
            self.n_values,
            target,
            self.num_masks,
            self.tile_size,
            self.baseline,
            self.output,
            self.batch_size,
            self.seed,
        )
        a, d = a.to(self.sum_a.device), d.to(self.sum_a.device)
        self.sum_a += a.sum((0, 2))
        self.sum_d += d.sum((0, 2))
        self.sum_aa += (a * a).sum((0, 2))
        self.sum_dd += (d * d).sum((0, 2))
        self.sum_ad += (a * d).sum((0, 2))
        self.count += a.shape[0] * a.shape[2]
        corr = _pearson(a, d)  # [B, L]
        ok = torch.isfinite(corr)
        self.corr_sum += torch.where(ok, corr, torch.zeros_like(corr)).sum(0)
        self.corr_count += ok.sum(0)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.double()
        cov = self.sum_ad / n - (self.sum_a / n) * (self.sum_d / n)
        var_a = (self.sum_aa / n - (self.sum_a / n) ** 2).clamp_min(0)
        var_d = (self.sum_dd / n - (self.sum_d / n) ** 2).clamp_min(0)
        pooled = cov / (var_a * var_d).sqrt()
        image_mean = self.corr_sum / self.corr_count.double()
        out = {}
        for i, nv in enumerate(self.n_values):
            out[f"sensitivity@{nv}"] = pooled[i]
            out[f"sensitivity_image_mean@{nv}"] = image_mean[i]
        return out


def _pearson(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dim (NaN where either side is constant)."""
    a = a - a.mean(-1, keepdim=True)
    d = d - d.mean(-1, keepdim=True)
    den = (a.pow(2).sum(-1) * d.pow(2).sum(-1)).sqrt()
    return torch.where(den > 0, (a * d).sum(-1) / den.clamp_min(1e-300), torch.nan)
