"""Localisation of attribution maps: anomaly-box IoU / ADA, pointing game, bounding-box ratio, Dice.

Boxes are LongTensor [B, 4] = (x_min, y_min, x_max, y_max) in pixels, with the max **exclusive**
(a 7x7 patch at the top-left corner is (0, 0, 7, 7)). Regions are either such boxes or masks
[B, H, W] (bool, or float read as ``mask >= 0.5``). Maps are [B, H, W], larger = more responsible.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from uattr.common import check_choice
from uattr.metrics._common import check_maps, minmax_rows, tie_break_ranks

__all__ = [
    "AnomalyLocalization",
    "BoundingBoxRatio",
    "PointingGame",
    "bounding_box_ratio",
    "box_iou",
    "boxes_to_masks",
    "dice_iou_thresholded",
    "pointing_hits",
    "predicted_boxes",
]

_BOX_FROM = ("window", "top_q")


def _check_boxes(boxes: torch.Tensor, batch_size: int, height: int, width: int) -> torch.Tensor:
    if (
        not isinstance(boxes, torch.Tensor)
        or boxes.is_floating_point()
        or boxes.shape != (batch_size, 4)
    ):
        raise ValueError(
            f"boxes must be an integer tensor [B, 4] = [{batch_size}, 4] of (x_min, y_min, x_max, "
            f"y_max) with exclusive max, got {getattr(boxes, 'shape', type(boxes).__name__)}"
            f"{'' if not isinstance(boxes, torch.Tensor) else f' of dtype {boxes.dtype}'}."
        )
    x0, y0, x1, y1 = boxes.long().unbind(1)
    bad = (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height) | (x1 <= x0) | (y1 <= y0)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"box {boxes[i].tolist()} (row {i}) is empty or outside the {height}x{width} image; "
            "boxes are (x_min, y_min, x_max, y_max) with 0 <= min < max <= size (max exclusive)."
        )
    return boxes.long()


def boxes_to_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bool masks [B, H, W] that are True inside each box (max exclusive)."""
    boxes = _check_boxes(
        boxes, boxes.shape[0] if isinstance(boxes, torch.Tensor) else -1, height, width
    )
    rows = torch.arange(height, device=boxes.device)[None, :, None]
    cols = torch.arange(width, device=boxes.device)[None, None, :]
    x0, y0, x1, y1 = (v[:, None, None] for v in boxes.unbind(1))
    return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)


def _regions_to_masks(regions: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    b, h, w = maps.shape
    if not isinstance(regions, torch.Tensor):
        raise TypeError(
            f"regions must be boxes [B, 4] or masks [B, H, W], got {type(regions).__name__}."
        )
    if regions.dim() == 2:
        return boxes_to_masks(_check_boxes(regions, b, h, w).to(maps.device), h, w)
    if regions.shape != (b, h, w):
        raise ValueError(
            f"regions must be boxes [B, 4] or masks [B, H, W] = {(b, h, w)}, "
            f"got {tuple(regions.shape)}."
        )
    masks = regions.to(maps.device)
    masks = masks if masks.dtype == torch.bool else masks >= 0.5
    if not masks.flatten(1).any(1).all():
        raise ValueError("a region mask is empty; drop images without a region before scoring.")
    return masks


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of paired boxes a[i], b[i] ([B, 4], max exclusive): float64 [B]."""
    a, b = a.long(), b.long()
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = (iw * ih).double()
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])).double()
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).double()
    return inter / (area_a + area_b - inter)


def _check_q(q: float) -> float:
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be a fraction in (0, 1], got {q}.")
    return q


def _pair(patch_size: int | tuple[int, int]) -> tuple[int, int]:
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if ph < 1 or pw < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size}.")
    return ph, pw


def predicted_boxes(
    maps: torch.Tensor,
    patch_size: int | tuple[int, int] = 7,
    box_from: Literal["window", "top_q"] = "window",
    q: float | None = None,
) -> torch.Tensor:
    """The box each map points at: LongTensor [B, 4] (x_min, y_min, x_max, y_max), max exclusive.

    - ``"window"``: the ``patch_size`` (int or (height, width)) window with the largest map sum
      (stride 1, inside the image; ties go to the top-most, then left-most window).
    - ``"top_q"``: the bounding box of the top ``q`` fraction of pixels (at least one; ties broken
      by a fixed seeded permutation); ``q=None`` uses the patch area / image area.
    """
    maps = check_maps(maps)
    b, h, w = maps.shape
    ph, pw = _pair(patch_size)
    check_choice(box_from, _BOX_FROM, "box_from")
    if box_from == "window":
        if ph > h or pw > w:
            raise ValueError(f"patch_size {(ph, pw)} is larger than the {h}x{w} maps.")
        sums = F.avg_pool2d(maps.double()[:, None], (ph, pw), stride=1).flatten(1)
        idx = sums.argmax(1)
        wout = w - pw + 1
        y0, x0 = idx // wout, idx % wout
        return torch.stack([x0, y0, x0 + pw, y0 + ph], 1)
    q = _check_q(ph * pw / (h * w) if q is None else q)
    n = max(1, round(q * h * w))
    top = tie_break_ranks(maps.flatten(1), seed=0) < n
    pix = torch.arange(h * w, device=maps.device)
    rows, cols = (pix // w).expand(b, -1), (pix % w).expand(b, -1)
    y0 = torch.where(top, rows, h).amin(1)
    y1 = torch.where(top, rows, -1).amax(1) + 1
    x0 = torch.where(top, cols, w).amin(1)
    x1 = torch.where(top, cols, -1).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], 1)


def pointing_hits(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Pointing game (Zhang et al. 2016), no tolerance: is each map's argmax pixel in its region?

    Bool [B]. Ties go to the first maximum in row-major order. The original's 15-pixel tolerance
    is not applied (images here are 28-32 pixels wide).
    """
    maps = check_maps(maps)
    masks = _regions_to_masks(regions, maps)
    idx = maps.flatten(1).argmax(1)
    return masks.flatten(1).gather(1, idx[:, None]).squeeze(1)


def bounding_box_ratio(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """IBA's ``ratio_top_in_bbox``: share of the n top-ranked pixels in the region (n = its area).

    Float64 [B] in [0, 1]; 1 when the map's n largest values are exactly the region. Ties in the map
    are broken by a fixed seeded permutation (IBA: numpy argsort order).
    """
    maps = check_maps(maps)
    masks = _regions_to_masks(regions, maps).flatten(1)
    n = masks.sum(1)
    top = tie_break_ranks(maps.flatten(1), seed=0) < n[:, None]
    return (top & masks).sum(1).double() / n.double()


def dice_iou_thresholded(
    maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5
) -> dict[str, torch.Tensor]:
    """Dice and IoU of thresholded maps vs object regions: ``{"dice": [B], "iou": [B]}`` (float64).

    Each map is min-max normalised to [0, 1] per image (a constant map becomes all zeros), then
    binarised as ``map >= threshold`` (default 0.5; both choices UNCONFIRMED, no paper fixes them).
    ``masks`` are regions (boxes [B, 4] or masks [B, H, W]). Dice = 2|A n B| / (|A| + |B|),
    IoU = |A n B| / |A u B|; both are 1 when A and B are empty.
    """
    maps = check_maps(maps)
    regions = _regions_to_masks(masks, maps).flatten(1)
    pred = minmax_rows(maps.flatten(1)) >= threshold
    inter = (pred & regions).sum(1).double()
    size = pred.sum(1).double() + regions.sum(1).double()
    union = (pred | regions).sum(1).double()
    one = torch.ones_like(inter)
    dice = torch.where(size > 0, 2 * inter / size.clamp_min(1), one)
    iou = torch.where(union > 0, inter / union.clamp_min(1), one)
    return {"dice": dice, "iou": iou}


class AnomalyLocalization(Metric):
    """Anomaly-patch localisation (UA-Backprop's anomaly test): mean IoU, ADA and pointing game.

    ``update(maps [B, H, W], boxes [B, 4])`` with the true patch boxes. The predicted box is
    :func:`predicted_boxes` (default: the ``patch_size`` window with the largest map sum; the
    alternative is the bounding box of the top-``q`` pixels). ``compute()`` -> ``{"iou": mean IoU,
    "ada": fraction of images with IoU >= ``iou_threshold``, "pointing_game": fraction whose argmax
    pixel lies in the true box}``.

    The protocol is UNCONFIRMED (UA-Backprop's anomaly protocol, Wang et al. CVPR 2023, is only in
    its supplement): "ADA" is read as anomaly detection accuracy at IoU >= 0.5 (the usual detection
    threshold); the pointing-game rate is logged in case ADA means that. Default ``patch_size`` 7
    is a 7x7 MNIST patch (25% of the side); match it to the data module's anomaly patch.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        patch_size: int | tuple[int, int] = 7,
        box_from: Literal["window", "top_q"] = "window",
        q: float | None = None,
        iou_threshold: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice(box_from, _BOX_FROM, "box_from")
        self.patch_size = _pair(patch_size)
        self.box_from = box_from
        self.q = q if q is None else _check_q(q)
        self.iou_threshold = iou_threshold
        self.add_state("iou_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ada_hits", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("pointing_hits", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, maps: torch.Tensor, boxes: torch.Tensor) -> None:
        maps = check_maps(maps)
        b, h, w = maps.shape
        boxes = _check_boxes(boxes, b, h, w).to(maps.device)
        iou = box_iou(predicted_boxes(maps, self.patch_size, self.box_from, self.q), boxes)
        self.iou_sum += iou.sum()
        self.ada_hits += (iou >= self.iou_threshold).sum()
        self.pointing_hits += pointing_hits(maps, boxes).sum()
        self.count += b

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.double()
        return {
            "iou": self.iou_sum / n,
            "ada": self.ada_hits.double() / n,
            "pointing_game": self.pointing_hits.double() / n,
        }


class BoundingBoxRatio(Metric):
    """IBA's bounding-box test (Schulz et al. ICLR 2020): mean of :func:`bounding_box_ratio`.

    ``update(maps [B, H, W], regions)`` with regions as boxes [B, 4] or masks [B, H, W] (IBA merges
    all boxes of an image into one mask); ``compute()`` -> scalar in [0, 1], higher is better.
    IBA keeps only images whose region covers at most 33% of the image; that filter belongs to the
    data, not here.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("ratio_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, maps: torch.Tensor, regions: torch.Tensor) -> None:
        ratio = bounding_box_ratio(maps, regions)
        self.ratio_sum += ratio.sum()
        self.count += ratio.numel()

    def compute(self) -> torch.Tensor:
        return self.ratio_sum / self.count


class PointingGame(Metric):
    """Pointing-game hit rate: share of maps whose argmax pixel lies in the region (no tolerance).

    ``update(maps [B, H, W], regions)`` with boxes [B, 4] or masks [B, H, W]; ``compute()`` ->
    scalar.
    See :func:`pointing_hits`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, maps: torch.Tensor, regions: torch.Tensor) -> None:
        hits = pointing_hits(maps, regions)
        self.hits += hits.sum()
        self.count += hits.numel()

    def compute(self) -> torch.Tensor:
        return self.hits.double() / self.count
