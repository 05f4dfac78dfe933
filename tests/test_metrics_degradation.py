"""Degradation (MoRF / LeRF): oracle and reversed orders, a naive tile loop, decomposability."""

import numpy as np
import pytest
import torch
from torch import nn

from uattr.metrics import Degradation, degradation_curves

H = W = 12
T = 4  # tile size: a 3x3 grid of tiles
KEY_TILES = [(0, 0), (1, 2)]  # (tile row, tile col) the toy class score reads


class KeyTileModel(nn.Module):
    """Logits [6 * (mean of the key tiles) - 3, 0]: class 0 wins while the key tiles stay bright."""

    def forward(self, x):
        s = sum(
            x[:, :, r * T : (r + 1) * T, c * T : (c + 1) * T].mean((1, 2, 3)) for r, c in KEY_TILES
        )
        z = 6 * s / len(KEY_TILES) - 3
        return torch.stack([z, torch.zeros_like(z)], 1)


def softmax_probs(model, x):
    return model(x).softmax(-1)


def _images(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.rand(b, 2, H, W, generator=g, dtype=torch.float64)
    for r, c in KEY_TILES:
        x[:, :, r * T : (r + 1) * T, c * T : (c + 1) * T] = 1.0
    return x


def _oracle_maps(b, reverse=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    maps = 0.1 * torch.rand(b, H, W, generator=g)
    for r, c in KEY_TILES:
        maps[:, r * T : (r + 1) * T, c * T : (c + 1) * T] += -5.0 if reverse else 5.0
    return maps


def _metric(**kw):
    return Degradation(tile_size=T, steps=10, probabilities=softmax_probs, **kw)


def test_oracle_positive_reversed_negative():
    x, model = _images(), KeyTileModel()
    results = {}
    for name, maps in {
        "oracle": _oracle_maps(3),
        "random": torch.rand(3, H, W, generator=torch.Generator().manual_seed(2)),
        "reversed": _oracle_maps(3, reverse=True),
    }.items():
        m = _metric()
        m.update(model, x, maps, target=torch.zeros(3, dtype=torch.long))
        results[name] = m.compute()
    assert results["oracle"]["degradation"] > 0.5
    assert results["reversed"]["degradation"] < -0.5
    assert results["oracle"]["degradation"] > results["random"]["degradation"]
    assert results["random"]["degradation"] > results["reversed"]["degradation"]
    # Oracle MoRF and reversed LeRF remove the same tiles in the same order.
    assert torch.allclose(results["oracle"]["morf_auc"], results["reversed"]["lerf_auc"])


def _naive(model, x, maps, steps, target):
    """Python loop over images and steps, tile by tile; returns (morf_auc, lerf_auc)."""
    b, n_side = x.shape[0], H // T
    num_tiles = n_side * n_side
    curves = {"morf": [], "lerf": []}
    for i in range(b):
        means = [
            maps[i, r * T : (r + 1) * T, c * T : (c + 1) * T].mean().item()
            for r in range(n_side)
            for c in range(n_side)
        ]
        fill = x[i].mean((1, 2))
        for name, order in (("morf", np.argsort(means)[::-1]), ("lerf", np.argsort(means))):
            curve = []
            for k in range(steps):
                xi = x[i].clone()
                for t in order[: round(k / (steps - 1) * num_tiles)]:
                    r, c = divmod(int(t), n_side)
                    xi[:, r * T : (r + 1) * T, c * T : (c + 1) * T] = fill[:, None, None]
                curve.append(model(xi[None]).softmax(-1)[0, target[i]].item())
            curves[name].append(curve)
    morf, lerf = np.mean(curves["morf"], 0), np.mean(curves["lerf"], 0)
    t1, base = morf[0], morf[-1]
    frac = np.linspace(0, 1, steps)
    aucs = [np.trapezoid((c - base) / (t1 - base), frac) for c in (morf, lerf)]
    return aucs


def test_against_naive_tile_loop():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 2, H, W, generator=g, dtype=torch.float64)
    maps = torch.rand(3, H, W, generator=g)
    model = KeyTileModel()
    m = Degradation(tile_size=T, steps=7, probabilities=softmax_probs, batch_size=5)
    m.update(model, x, maps)
    target = model(x).argmax(1)  # the default target: the predicted class
    morf_auc, lerf_auc = _naive(model, x, maps, 7, target)
    out = m.compute()
    assert out["morf_auc"].item() == pytest.approx(morf_auc, rel=1e-9)
    assert out["lerf_auc"].item() == pytest.approx(lerf_auc, rel=1e-9)
    assert out["degradation"].item() == pytest.approx(lerf_auc - morf_auc, rel=1e-9)


def test_curves_endpoints_and_default_probabilities():
    x, model = _images(2), KeyTileModel()
    raw = degradation_curves(model, x, _oracle_maps(2), tile_size=T, steps=5)  # posterior default
    ref = degradation_curves(
        model, x, _oracle_maps(2), tile_size=T, steps=5, probabilities=softmax_probs
    )
    assert torch.allclose(raw["morf"], ref["morf"]) and torch.allclose(raw["lerf"], ref["lerf"])
    assert torch.allclose(raw["morf"][:, 0], raw["lerf"][:, 0])  # both start at the original
    assert torch.allclose(raw["morf"][:, -1], raw["lerf"][:, -1])  # and end fully degraded
    m = _metric()
    m.update(model, x, _oracle_maps(2))
    curves = m.curves()
    frac, morf = curves["morf"]
    assert frac.tolist() == pytest.approx(np.linspace(0, 1, 10).tolist())
    assert morf[0].item() == pytest.approx(1.0) and morf[-1].item() == pytest.approx(0.0)


def test_non_divisible_tiles_and_zero_baseline():
    x = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(100, 3)).double()
    out = degradation_curves(
        model, x, torch.rand(2, 10, 10), tile_size=4, steps=10, baseline="zero"
    )
    # 3x3 tiles (edge tiles 4x2, 2x4, 2x2); fully degraded = the all-black image.
    black = model(torch.zeros(1, 1, 10, 10, dtype=torch.float64)).softmax(-1)
    target = model(x).argmax(1)
    assert torch.allclose(out["morf"][:, -1], black[0, target])


def test_two_updates_equal_one_and_reset():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(5, 2, H, W, generator=g, dtype=torch.float64)
    maps, model = torch.rand(5, H, W, generator=g), KeyTileModel()
    one = _metric()
    one.update(model, x, maps)
    two = _metric()
    two.update(model, x[:2], maps[:2])
    two.update(model, x[2:], maps[2:])
    for key, value in one.compute().items():
        assert torch.allclose(two.compute()[key], value), key
    two.reset()
    two.update(model, x[:1], maps[:1])
    fresh = _metric()
    fresh.update(model, x[:1], maps[:1])
    assert torch.allclose(two.compute()["degradation"], fresh.compute()["degradation"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="baseline"):
        Degradation(baseline="blur")
    with pytest.raises(ValueError, match="steps"):
        Degradation(steps=1)
    with pytest.raises(ValueError, match="tile_size"):
        degradation_curves(KeyTileModel(), _images(1), _oracle_maps(1), tile_size=13)
    with pytest.raises(ValueError, match="classes"):
        _metric().update(KeyTileModel(), _images(1), _oracle_maps(1), target=torch.tensor([5]))
