"""Sensitivity-n: the exact attribution of a linear model scores 1; naive-loop cross-check."""

import numpy as np
import pytest
import torch
from torch import nn

from uattr.metrics import SensitivityN, sensitivity_n_samples
from uattr.metrics.sensitivity import _random_tile_masks

C, H, W = 2, 6, 6


def _linear(seed=0, classes=1):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, classes, bias=True)).double()
    return model


def _x(b=4, seed=1):
    return torch.rand(
        b, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def _exact_map(model, x, cls=0):
    """x * w summed over channels: the exact attribution of a linear model against a 0 baseline."""
    w = model[1].weight[cls].view(C, H, W)
    return (x * w).sum(1).detach()


N_VALUES = (1, 3, 10, 20)


def test_linear_model_exact_attribution_is_one():
    model, x = _linear(), _x()
    target = torch.zeros(4, dtype=torch.long)
    m = SensitivityN(n_values=N_VALUES, num_masks=20)
    m.update(model, x, _exact_map(model, x), target)  # default output: the class logit
    out = m.compute()
    for n in N_VALUES:
        assert out[f"sensitivity@{n}"].item() == pytest.approx(1.0, abs=1e-9)
        assert out[f"sensitivity_image_mean@{n}"].item() == pytest.approx(1.0, abs=1e-9)
    noise = SensitivityN(n_values=N_VALUES, num_masks=20)
    noise.update(model, x, torch.rand(4, H, W, generator=torch.Generator().manual_seed(2)), target)
    assert all(v.item() < 0.9 for v in noise.compute().values())


def test_tiles_and_default_target():
    model, x = _linear(classes=3), _x()
    target = model(x).argmax(1)
    maps = torch.stack([_exact_map(model, x[i : i + 1], int(t))[0] for i, t in enumerate(target)])
    m = SensitivityN(n_values=(1, 4), num_masks=10, tile_size=2)
    m.update(model, x, maps)  # target defaults to the predicted class
    for value in m.compute().values():
        assert value.item() == pytest.approx(1.0, abs=1e-9)


def test_against_naive_loop():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(C * H * W, 8), nn.Tanh(), nn.Linear(8, 3)
    ).double()
    x, maps = _x(3, seed=4), torch.rand(3, H, W, generator=torch.Generator().manual_seed(5))
    target = torch.tensor([0, 2, 1])

    def output(model, xb, t):
        return model(xb).gather(1, t[:, None]).squeeze(1)

    a, d = sensitivity_n_samples(
        model, x, maps, (2, 7), target, num_masks=6, output=output, batch_size=4, seed=9
    )
    m = SensitivityN(n_values=(2, 7), num_masks=6, output=output, batch_size=4, seed=9)
    m.update(model, x, maps, target)
    out = m.compute()

    for i, n in enumerate((2, 7)):
        sets = _random_tile_masks(H * W, n, 6, seed=9)
        pooled_a, pooled_d, per_image = [], [], []
        for b in range(3):
            f0 = model(x[b : b + 1])[0, target[b]].item()
            rows_a, rows_d = [], []
            for j in range(6):
                xm, s = x[b].clone(), 0.0
                for p in sets[j].nonzero().flatten().tolist():
                    r, c = divmod(p, W)
                    xm[:, r, c] = 0.0
                    s += maps[b, r, c].item()
                rows_a.append(s)
                rows_d.append(f0 - model(xm[None])[0, target[b]].item())
            assert np.allclose(a[b, i].numpy(), rows_a) and np.allclose(d[b, i].numpy(), rows_d)
            pooled_a += rows_a
            pooled_d += rows_d
            per_image.append(np.corrcoef(rows_a, rows_d)[0, 1])
        assert out[f"sensitivity@{n}"].item() == pytest.approx(
            np.corrcoef(pooled_a, pooled_d)[0, 1]
        )
        assert out[f"sensitivity_image_mean@{n}"].item() == pytest.approx(np.mean(per_image))


def test_two_updates_equal_one_and_reset():
    model, x = _linear(classes=2), _x(5, seed=6)
    maps = torch.rand(5, H, W, generator=torch.Generator().manual_seed(7))
    target = torch.tensor([0, 1, 1, 0, 1])
    one = SensitivityN(n_values=(1, 5), num_masks=8)
    one.update(model, x, maps, target)
    two = SensitivityN(n_values=(1, 5), num_masks=8)
    two.update(model, x[:2], maps[:2], target[:2])
    two.update(model, x[2:], maps[2:], target[2:])
    for key, value in one.compute().items():
        assert torch.allclose(two.compute()[key], value), key
    two.reset()
    two.update(model, x[:2], maps[:2], target[:2])
    fresh = SensitivityN(n_values=(1, 5), num_masks=8)
    fresh.update(model, x[:2], maps[:2], target[:2])
    assert torch.allclose(two.compute()["sensitivity@5"], fresh.compute()["sensitivity@5"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="outside"):
        SensitivityN(n_values=(1, 100), num_masks=4).update(
            _linear(), _x(1), torch.rand(1, H, W), torch.zeros(1, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="distinct"):
        SensitivityN(n_values=(2, 2))
    with pytest.raises(ValueError, match="num_masks"):
        SensitivityN(num_masks=1)
