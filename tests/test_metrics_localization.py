"""Localisation metrics: anomaly box IoU / ADA, pointing game, bounding-box ratio, Dice / IoU."""

import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from uattr.metrics import (
    AnomalyLocalization,
    BoundingBoxRatio,
    PointingGame,
    bounding_box_ratio,
    box_iou,
    boxes_to_masks,
    dice_iou_thresholded,
    pointing_hits,
    predicted_boxes,
)

H, W, P = 20, 24, 5


def _patch_maps(boxes, seed=0):
    """Small noise everywhere, 1 + noise inside each box: the box is the clear argmax window."""
    g = torch.Generator().manual_seed(seed)
    maps = 0.1 * torch.rand(len(boxes), H, W, generator=g)
    return maps + boxes_to_masks(boxes, H, W).float()


def _boxes(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, W - P + 1, (b,), generator=g)
    y0 = torch.randint(0, H - P + 1, (b,), generator=g)
    return torch.stack([x0, y0, x0 + P, y0 + P], 1)


def test_map_on_the_patch_finds_it():
    boxes = _boxes()
    maps = _patch_maps(boxes)
    assert torch.equal(predicted_boxes(maps, P), boxes)
    assert torch.equal(predicted_boxes(maps, P, "top_q"), boxes)  # q = patch area / image area
    m = AnomalyLocalization(patch_size=P)
    m.update(maps, boxes)
    assert m.compute() == {"iou": 1.0, "ada": 1.0, "pointing_game": 1.0}
    q = AnomalyLocalization(patch_size=P, box_from="top_q")
    q.update(maps, boxes)
    assert q.compute()["iou"].item() == 1.0


def test_map_peaked_elsewhere_misses():
    boxes = torch.tensor([[0, 0, P, P]] * 3)
    elsewhere = torch.tensor([[W - P, H - P, W, H]] * 3)
    m = AnomalyLocalization(patch_size=P)
    m.update(_patch_maps(elsewhere), boxes)
    assert m.compute() == {"iou": 0.0, "ada": 0.0, "pointing_game": 0.0}


def test_window_argmax_matches_naive_loop():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(4, H, W, generator=g)
    for ph, pw in [(P, P), (3, 7)]:
        got = predicted_boxes(maps, (ph, pw))
        for i in range(4):
            best, arg = -1.0, None
            for y in range(H - ph + 1):
                for x in range(W - pw + 1):
                    s = maps[i, y : y + ph, x : x + pw].double().sum().item()
                    if s > best:
                        best, arg = s, [x, y, x + pw, y + ph]
            assert got[i].tolist() == arg


def test_top_q_box_matches_naive():
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(3, H, W, generator=g)
    got = predicted_boxes(maps, box_from="top_q", q=0.05)
    n = round(0.05 * H * W)
    for i in range(3):
        top = maps[i].flatten().argsort(descending=True)[:n]
        rows, cols = (top // W).tolist(), (top % W).tolist()
        assert got[i].tolist() == [min(cols), min(rows), max(cols) + 1, max(rows) + 1]


def test_box_iou_matches_torchvision_and_hand_values():
    a = torch.tensor([[0, 0, 4, 4], [2, 2, 6, 6], [0, 0, 2, 2]])
    b = torch.tensor([[2, 0, 6, 4], [2, 2, 6, 6], [5, 5, 7, 7]])
    assert box_iou(a, b).tolist() == [8 / 24, 1.0, 0.0]
    g = torch.Generator().manual_seed(3)
    a, b = _boxes(20, seed=4), _boxes(20, seed=5)
    b[:, 2:] += torch.randint(0, 3, (20, 2), generator=g)
    want = tv_box_iou(a.double(), b.double()).diagonal()
    assert torch.allclose(box_iou(a, b), want)


def test_ada_threshold_and_partial_overlap():
    boxes = torch.tensor([[0, 0, 4, 4], [0, 0, 4, 4]])
    shifted = torch.tensor([[1, 0, 5, 4], [2, 0, 6, 4]])  # IoU 12/20 = 0.6 and 8/24 = 1/3
    m = AnomalyLocalization(patch_size=4)
    m.update(_patch_maps(shifted), boxes)
    out = m.compute()
    assert out["iou"].item() == pytest.approx((0.6 + 1 / 3) / 2)
    assert out["ada"].item() == 0.5


def test_pointing_game_and_bbox_ratio_known_answers():
    boxes = _boxes(4, seed=6)
    maps = _patch_maps(boxes)
    masks = boxes_to_masks(boxes, H, W)
    assert pointing_hits(maps, boxes).all() and pointing_hits(maps, masks).all()
    assert torch.equal(bounding_box_ratio(maps, boxes), torch.ones(4, dtype=torch.float64))
    assert not pointing_hits(-maps, boxes).any()
    assert torch.equal(bounding_box_ratio(-maps, masks), torch.zeros(4, dtype=torch.float64))


def test_bbox_ratio_matches_naive_and_float_masks():
    g = torch.Generator().manual_seed(7)
    maps = torch.rand(5, H, W, generator=g)
    masks = torch.rand(5, H, W, generator=g) > 0.8
    got = bounding_box_ratio(maps, masks.float())  # float masks are read as >= 0.5
    for i in range(5):
        n = int(masks[i].sum())
        top = maps[i].flatten().argsort(descending=True)[:n]
        assert got[i].item() == pytest.approx(masks[i].flatten()[top].float().mean().item())


@pytest.mark.parametrize("cls", [BoundingBoxRatio, PointingGame])
def test_two_updates_equal_one_and_reset(cls):
    g = torch.Generator().manual_seed(8)
    maps, boxes = torch.rand(6, H, W, generator=g), _boxes(6, seed=9)
    whole = cls()(maps, boxes)
    m = cls()
    m.update(maps[:2], boxes[:2])
    m.update(maps[2:], boxes[2:])
    assert torch.allclose(m.compute(), whole)
    m.reset()
    m.update(maps[:1], boxes[:1])
    assert torch.allclose(m.compute(), cls()(maps[:1], boxes[:1]))


def test_anomaly_localization_two_updates_equal_one():
    g = torch.Generator().manual_seed(10)
    maps, boxes = torch.rand(6, H, W, generator=g), _boxes(6, seed=11)
    one = AnomalyLocalization(patch_size=P)
    one.update(maps, boxes)
    two = AnomalyLocalization(patch_size=P)
    two.update(maps[:4], boxes[:4])
    two.update(maps[4:], boxes[4:])
    for key, value in one.compute().items():
        assert torch.allclose(two.compute()[key], value), key


def test_dice_iou_thresholded():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True  # 4 pixels
    maps = torch.zeros(3, 4, 4)
    maps[0, :2, :2] = 5.0  # exactly the region
    maps[1, :2, :] = 1.0  # 8 pixels, 4 inside: Dice 8/12, IoU 4/8
    maps[2, 3, 3] = 1.0  # disjoint
    out = dice_iou_thresholded(maps, masks)
    assert out["dice"].tolist() == pytest.approx([1.0, 2 / 3, 0.0])
    assert out["iou"].tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_bad_boxes_raise():
    maps = torch.rand(2, H, W)
    with pytest.raises(ValueError, match="exclusive"):
        AnomalyLocalization().update(maps, torch.tensor([[0, 0, 0, 4], [0, 0, 4, 4]]))
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        AnomalyLocalization().update(maps, torch.tensor([[0.0, 0, 4, 4], [0, 0, 4, 4]]))
    with pytest.raises(ValueError, match="larger"):
        predicted_boxes(maps, patch_size=H + 1)
    with pytest.raises(ValueError, match="empty"):
        PointingGame().update(maps, torch.zeros(2, H, W, dtype=torch.bool))
