"""Image degradation test (MoRF / LeRF) for class attributions, as in IBA (Schulz et al. ICLR 2020).

Tiles are replaced, most relevant first (MoRF) or least relevant first (LeRF), by the per-channel
mean of the image, and the class probability is recorded after each step. A faithful map makes the
MoRF curve drop fast and the LeRF curve stay high: the area between them (LeRF - MoRF) is the score.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torchmetrics import Metric

from uattr.common import check_choice, check_positive_int
from uattr.metrics._common import (
    check_images_and_maps,
    check_labels,
    evaluate_chunks,
    index_batches,
    predictive_probabilities,
    tie_break_ranks,
    tile_ids,
)

__all__ = ["Degradation", "degradation_curves"]

_BASELINES = ("mean", "zero")


def _check_steps_and_baseline(steps: int, baseline: str) -> None:
    # Two steps at least: the original and the fully degraded image.
    check_positive_int(steps, "steps", minimum=2)
    check_choice(baseline, _BASELINES, "baseline")


def degradation_curves(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: torch.Tensor | None = None,
    tile_size: int = 4,
    steps: int = 100,
    baseline: Literal["mean", "zero"] = "mean",
    probabilities: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Raw MoRF and LeRF curves of the target-class probability: ``{"morf", "lerf"}`` [B, steps].

    Step k (k = 0 .. steps - 1) has the first round(k / (steps - 1) * T) of the T tiles replaced,
    tiles ordered by their mean map value (MoRF descending, LeRF ascending; ties broken by one
    seeded permutation). Column 0 is the original image, the last column the fully degraded one.
    ``target`` defaults to the class predicted on the original image. See :class:`Degradation`.
    """
    x, maps = check_images_and_maps(x, maps)
    check_positive_int(batch_size, "batch_size")
    _check_steps_and_baseline(steps, baseline)
    b, c, h, w = x.shape
    prob_fn = probabilities or predictive_probabilities
    tile_id, num_tiles = tile_ids(h, w, tile_size, x.device)
    flat = maps.flatten(1).double()
    tile_sum = torch.zeros(b, num_tiles, dtype=torch.float64, device=x.device).index_add_(
        1, tile_id, flat
    )
    tile_means = tile_sum / torch.bincount(tile_id, minlength=num_tiles).double()
    ranks = torch.stack(
        [
            tie_break_ranks(tile_means, seed, descending=True),
            tie_break_ranks(tile_means, seed, descending=False),
        ]
    )  # [2, B, T]: 0 = MoRF, 1 = LeRF
    counts_per_step = torch.round(
        torch.linspace(0, 1, steps, dtype=torch.float64) * num_tiles
    ).long()
    grid, step_idx = torch.unique(counts_per_step, return_inverse=True)
    grid, step_idx = grid.to(x.device), step_idx.to(x.device)
    fill = x.mean((2, 3), keepdim=True) if baseline == "mean" else torch.zeros_like(x[:, :, :1, :1])
    m = grid.numel()
    total = 2 * b * m

    def chunks():
        for idx in index_batches(total, batch_size, x.device):
            order, img, n = idx // (b * m), (idx // m) % b, grid[idx % m]
            mask = (ranks[order, img][:, tile_id] < n[:, None]).view(-1, 1, h, w)
            yield torch.where(mask, fill[img], x[img])

    probs = evaluate_chunks(model, prob_fn, chunks())
    if probs.dim() != 2:
        raise RuntimeError(f"probabilities must be [N, K], got shape {tuple(probs.shape)}.")
    probs = probs.view(2, b, m, -1)
    if target is None:
        target = probs[0, :, 0].argmax(-1)
    target = check_labels(target, b, probs.shape[-1]).to(x.device)
    score = probs.gather(3, target[None, :, None, None].expand(2, b, m, 1)).squeeze(3)  # [2, B, M]
    score = score[:, :, step_idx]
    return {"morf": score[0], "lerf": score[1]}


class Degradation(Metric):
    """MoRF / LeRF degradation test of class attributions (IBA, Schulz et al. ICLR 2020).

    ``update(model, x [B, C, H, W], maps [B, H, W], target=None)``:

    - the map is averaged per ``tile_size`` x ``tile_size`` tile (default 4, UNCONFIRMED: IBA used 8
      and 14 on 224-pixel ImageNet images; 4 gives a 7x7 grid on MNIST, 8x8 on CIFAR);
    - MoRF removes tiles in descending order of their mean, LeRF in ascending order (ties broken by
      one seeded permutation); a removed tile takes the per-channel mean of that image
      (``baseline="mean"``, IBA's ``Mean()``; ``"zero"`` is black);
    - the score is the probability of the ``target`` class (default: the class predicted on the
      original image; IBA stored both the label and the top-1 class, which one the paper used is
      UNCONFIRMED) from ``probabilities(model, x) -> [B, K]`` (default
      :func:`uattr.bayes.posterior.predictive_distribution`, the posterior mean), under ``no_grad``,
      on batches of ``batch_size`` perturbed copies;
    - ``steps`` evaluation points (default 100, IBA's ``n_steps``): after round(k / (steps - 1) * T)
      of the T tiles, k = 0 .. steps - 1; the curves are plotted against k / (steps - 1).

    The mean curves over all images are normalised as s' = (s - b) / (t1 - b), t1 = mean score of
    the originals, b = mean score of the fully degraded images (UNCONFIRMED, from memory of the IBA
    paper; normalising the mean curve rather than each image's is a choice that avoids dividing by
    t1 - b ~ 0 for single images). ``compute()`` -> ``{"morf_auc", "lerf_auc", "degradation" =
    lerf_auc - morf_auc (higher is better), "score_original" = t1, "score_degraded" = b}``, areas by
    the trapezoid rule over [0, 1]. :meth:`curves` gives the normalised mean curves. State is a sum
    of curves, so batches and DDP ranks combine exactly.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        tile_size: int = 4,
        steps: int = 100,
        baseline: Literal["mean", "zero"] = "mean",
        probabilities: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 256,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tile_size = check_positive_int(tile_size, "tile_size")
        _check_steps_and_baseline(steps, baseline)
        self.steps = steps
        self.baseline = baseline
        self.probabilities = probabilities
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = seed
        zeros = torch.zeros(steps, dtype=torch.float64)
        self.add_state("morf_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("lerf_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(
        self,
        model: nn.Module,
        x: torch.Tensor,
        maps: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> None:
        curves = degradation_curves(
            model,
            x,
            maps,
            target,
            self.tile_size,
            self.steps,
            self.baseline,
            self.probabilities,
            self.batch_size,
            self.seed,
        )
        self.morf_sum += curves["morf"].sum(0).to(self.morf_sum.device)
        self.lerf_sum += curves["lerf"].sum(0).to(self.lerf_sum.device)
        self.count += x.shape[0]

    def _normalised(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        morf, lerf = self.morf_sum / self.count, self.lerf_sum / self.count
        t1, b = morf[0], morf[-1]
        return (morf - b) / (t1 - b), (lerf - b) / (t1 - b), t1, b

    def compute(self) -> dict[str, torch.Tensor]:
        morf, lerf, t1, b = self._normalised()
        frac = torch.linspace(0, 1, self.steps, dtype=torch.float64, device=morf.device)
        morf_auc, lerf_auc = torch.trapezoid(morf, frac), torch.trapezoid(lerf, frac)
        return {
            "morf_auc": morf_auc,
            "lerf_auc": lerf_auc,
            "degradation": lerf_auc - morf_auc,
            "score_original": t1,
            "score_degraded": b,
        }

    def curves(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{"morf": (fraction of tiles removed [steps], mean s' [steps]), "lerf"}``."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync):
            morf, lerf, _, _ = self._normalised()
        frac = torch.linspace(0, 1, self.steps, dtype=torch.float64)
        return {"morf": (frac, morf.cpu()), "lerf": (frac, lerf.cpu())}
