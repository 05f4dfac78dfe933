"""Blurring test (MURR / AUC-URR): known answers on a toy uncertainty, a per-pixel naive loop."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from uattr.metrics import BlurringTest, blur_images, blurring_curves, blurring_scores, count_grid

H = W = 16
KEY_PIXELS = [(3, 4), (8, 8), (12, 2)]  # (row, col): the only pixels the toy uncertainty reads


def _images(b=4, seed=0):
    """Dark images (0.1 noise) with the key pixels bright, so blurring them lowers them."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(b, 1, H, W, generator=g, dtype=torch.float64)
    for r, c in KEY_PIXELS:
        x[:, :, r, c] = 1.0
    return x


def key_uncertainty(model, x):
    """U(x) = 0.1 + sum of the key pixels: depends on nothing else."""
    return 0.1 + sum(x[:, 0, r, c] for r, c in KEY_PIXELS)


def _oracle_map(b, reverse=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(b, H, W, generator=g) * 0.5
    for r, c in KEY_PIXELS:
        maps[:, r, c] = -1.0 if reverse else 1.0 + r / 100
    return maps


MODEL = nn.Identity()  # unused by key_uncertainty; the metric only passes it through


def test_count_grid_readings():
    grid = count_grid(25, (0.2, 0.08))
    counts = grid["grid"]
    assert counts[grid["step@20%"]].tolist() == [0, 5, 10, 15, 20, 25]
    assert counts[grid["budget@20%"]].tolist() == [0, 1, 2, 3, 4, 5]
    assert counts[grid["step@8%"]].tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25]
    assert counts[grid["budget@8%"]].tolist() == [0, 1, 2]
    # The budget-only grid: 0 .. floor(max(p) HW), each budget reading a prefix of it.
    budget = count_grid(25, (0.2, 0.08), budget_only=True)
    assert set(budget) == {"grid", "budget@20%", "budget@8%"}
    assert budget["grid"].tolist() == [0, 1, 2, 3, 4, 5]
    assert budget["budget@8%"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="fractions"):
        count_grid(25, (0.2, 0.2))


def _scored_metric(selection, b=7):
    """A BlurringTest updated on b images with distinct U_0 (two updates), and its model."""
    x = _images(b=b, seed=2)
    x[:, :, 0, 0] = torch.linspace(0.0, 1.0, b)[:, None]

    def fn(model, xb):
        return key_uncertainty(model, xb) * (0.5 + xb[:, 0, 0, 0]) + xb[:, 0, 5].mean(1)

    maps = torch.rand(b, H, W, generator=torch.Generator().manual_seed(6))
    m = BlurringTest(uncertainty=fn, fractions=(0.02, 0.05, 0.1), selection=selection)
    m.update(MODEL, x[:3], maps[:3])
    m.update(MODEL, x[3:], maps[3:])
    return m, fn, x, maps


@pytest.mark.parametrize("selection", ["all", "above_median"])
def test_compute_is_the_mean_of_blurring_scores(selection):
    m, _, _, _ = _scored_metric(selection)
    got = m.compute()
    u = torch.cat(m.u_curves)
    if selection == "above_median":  # the metric's pre-selection, then blurring_scores
        u = u[u[:, 0] >= u[:, 0].median()]  # 7 images: the median is the middle value
    per_image = blurring_scores(u, H * W, m.fractions)
    assert set(per_image) == {
        f"{name}@{p}"
        for name in ("murr", "auc_urr", "murr_step", "auc_urr_step")
        for p in ("2%", "5%", "10%")
    }
    for key, values in per_image.items():
        assert values.dtype == torch.float64 and values.shape == (u.shape[0],)
        assert abs(got[key].item() - values.mean().item()) <= 1e-12, key
    for p in ("2%", "5%", "10%"):
        assert abs(got[f"murr_median@{p}"].item() - np.median(per_image[f"murr@{p}"])) <= 1e-12
    assert got["num_images"].item() == u.shape[0]


def test_blurring_scores_on_budget_counts_equal_the_full_grid():
    m, fn, x, maps = _scored_metric("all")
    full = blurring_scores(torch.cat(m.u_curves), H * W, m.fractions)
    counts = count_grid(H * W, m.fractions, budget_only=True)["grid"]
    assert counts.tolist() == list(range(math.floor(0.1 * H * W) + 1))
    u = blurring_curves(MODEL, x, maps, counts, fn)
    budget = blurring_scores(u, H * W, m.fractions)
    assert set(budget) == {
        f"{name}@{p}" for name in ("murr", "auc_urr") for p in ("2%", "5%", "10%")
    }
    for key, values in budget.items():
        assert torch.equal(values, full[key]), key
    with pytest.raises(ValueError, match="count grid"):
        blurring_scores(u[:, :-1], H * W, m.fractions)


def test_blurring_scores_skip_low_uncertainty_images():
    u = torch.tensor([[2.0, 1.0, 0.5], [1e-7, 0.0, 0.0], [1.0, 1.0, 0.25]], dtype=torch.float64)
    # 4 pixels, p = 50%: the budget counts 0, 1, 2 are the whole (budget-only) curve.
    out = blurring_scores(u, 4, (0.5,))
    assert out["murr@50%"].tolist() == [0.75, 0.75]
    # Trapezoid of r over x = 0, 1/4, 2/4, divided by 1/2: ((1 + r1) / 2 + (r1 + r2) / 2) / 2.
    assert out["auc_urr@50%"].tolist() == pytest.approx([0.5625, 0.8125])
    assert blurring_scores(u, 4, (0.5,), min_uncertainty=1.5)["murr@50%"].tolist() == [0.75]


def test_blur_matches_scipy_mirror():
    x = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    want = gaussian_filter(x.numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror", truncate=4.0)
    assert np.allclose(blur_images(x, sigma=1.0).numpy(), want, atol=1e-12)


def test_oracle_beats_random_beats_reversed():
    x = _images()
    b = x.shape[0]
    blurred = blur_images(x, 1.5)
    u0 = key_uncertainty(None, x)
    u_min = key_uncertainty(None, blurred)  # all key pixels blurred: the lowest reachable U
    best = (1 - u_min / u0).mean().item()
    results = {}
    for name, maps in {
        "oracle": _oracle_map(b),
        "random": torch.rand(b, H, W, generator=torch.Generator().manual_seed(5)),
        "reversed": _oracle_map(b, reverse=True),
    }.items():
        m = BlurringTest(uncertainty=key_uncertainty, selection="all")
        m.update(MODEL, x, maps)
        results[name] = m.compute()
    oracle, random, reversed_ = results["oracle"], results["random"], results["reversed"]
    # 3 key pixels fit in the 2% budget (5 of 256 pixels): the oracle reaches the maximum there.
    assert oracle["murr@2%"].item() == pytest.approx(best, rel=1e-9)
    assert oracle["murr_step@2%"].item() == pytest.approx(best, rel=1e-9)
    assert reversed_["murr@2%"].item() == pytest.approx(0.0, abs=1e-12)
    # Over the whole curve every order eventually blurs every key pixel.
    assert random["murr_step@5%"].item() == pytest.approx(best, rel=1e-9)
    assert reversed_["murr_step@5%"].item() == pytest.approx(best, rel=1e-9)
    for key in ("auc_urr@2%", "auc_urr@5%", "auc_urr_step@2%", "auc_urr_step@5%"):
        assert oracle[key] < random[key] < reversed_[key], key
    assert oracle["murr@5%"] >= random["murr@5%"] >= reversed_["murr@5%"]
    assert oracle["num_images"].item() == b and oracle["num_skipped"].item() == 0


def _naive(x, maps, fn, fractions, sigma):
    """Per-image, per-pixel Python loop with scipy's blur; returns the compute() dict."""
    b, _, h, w = x.shape
    hw = h * w
    blurred = torch.from_numpy(
        gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0)
    )
    per_image = []
    for i in range(b):
        order = sorted(range(hw), key=lambda p: -maps[i].flatten()[p].item())
        curve = []
        for n in range(hw + 1):
            xi = x[i].clone().double()
            for p in order[:n]:
                r, c = divmod(p, w)
                xi[:, r, c] = blurred[i, :, r, c]
            curve.append(fn(None, xi[None]).item())
        per_image.append(np.array(curve) / curve[0])
    out = {}
    for p in fractions:
        key = f"{p * 100:g}%"
        nb = math.floor(p * hw + 1e-9)
        steps = [min(math.ceil(k * p * hw - 1e-9), hw) for k in range(math.ceil(1 / p - 1e-9) + 1)]
        xs = np.array(steps) / hw
        xb = np.arange(nb + 1) / hw
        out[f"murr@{key}"] = np.mean([(1 - r[: nb + 1]).max() for r in per_image])
        out[f"auc_urr@{key}"] = np.mean([np.trapezoid(r[: nb + 1], xb) / xb[-1] for r in per_image])
        out[f"murr_median@{key}"] = np.median([(1 - r[: nb + 1]).max() for r in per_image])
        out[f"murr_step@{key}"] = np.mean([(1 - r[steps]).max() for r in per_image])
        out[f"auc_urr_step@{key}"] = np.mean([np.trapezoid(r[steps], xs) for r in per_image])
        out[f"murr_step_median@{key}"] = np.median([(1 - r[steps]).max() for r in per_image])
    return out


def test_against_per_pixel_loop_5x5():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 5, 5, generator=g, dtype=torch.float64)
    maps = torch.rand(3, 5, 5, generator=g)  # continuous: no ties
    weights = torch.rand(2, 5, 5, generator=g, dtype=torch.float64)

    def fn(model, xb):  # a nonlinear function of every pixel
        return torch.exp(-(xb * weights).sum((1, 2, 3)) / 10) + 0.05

    fractions = (0.2, 0.08)
    m = BlurringTest(uncertainty=fn, fractions=fractions, sigma=0.8, selection="all", batch_size=7)
    m.update(MODEL, x, maps)
    got = m.compute()
    want = _naive(x, maps, fn, fractions, sigma=0.8)
    for key, value in want.items():
        assert got[key].item() == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_two_updates_equal_one_reset_and_selection():
    x = _images(b=6, seed=3)
    x[:, :, 0, 0] = torch.linspace(0.0, 1.0, 6)[:, None]  # makes U_0 differ between images

    def fn(model, xb):
        return key_uncertainty(model, xb) + xb[:, 0, 0, 0]

    maps = torch.rand(6, H, W, generator=torch.Generator().manual_seed(4))
    one = BlurringTest(uncertainty=fn, batch_size=50)
    one.update(MODEL, x, maps)
    two = BlurringTest(uncertainty=fn, batch_size=50)
    two.update(MODEL, x[:2], maps[:2])
    two.update(MODEL, x[2:], maps[2:])
    a, b = one.compute(), two.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key]), key
    # Selection across updates: U_0 at or above the median of all 6 images -> the 3 largest.
    assert a["num_images"].item() == 3
    top3 = BlurringTest(uncertainty=fn, selection="all")
    top3.update(MODEL, x[3:], maps[3:])
    assert torch.allclose(a["murr@2%"], top3.compute()["murr@2%"])
    two.reset()
    two.update(MODEL, x[3:], maps[3:])
    assert torch.allclose(two.compute()["auc_urr@5%"], one.compute()["auc_urr@5%"])


def test_zero_uncertainty_images_are_skipped_and_counted():
    x = _images(b=3)
    x[1, 0, 0, 0] = 1.0  # marks image 1, whose toy uncertainty is 0

    def fn(model, xb):
        u = key_uncertainty(model, xb)
        return torch.where(xb[:, 0, 0, 0] == 1.0, torch.zeros_like(u), u)

    m = BlurringTest(uncertainty=fn, selection="all")
    m.update(MODEL, x, _oracle_map(3))
    out = m.compute()
    assert out["num_skipped"].item() == 1 and out["num_images"].item() == 2
    assert all(torch.isfinite(v) for v in out.values())
    with pytest.warns(UserWarning, match="no image"):
        empty = BlurringTest(uncertainty=lambda model, xb: torch.zeros(len(xb)), selection="all")
        empty.update(MODEL, x, _oracle_map(3))
        assert torch.isnan(empty.compute()["murr@2%"])


def test_curves_for_plotting():
    x = _images(b=2)
    m = BlurringTest(uncertainty=key_uncertainty, selection="all")
    m.update(MODEL, x, _oracle_map(2))
    curves = m.curves()
    assert set(curves) == {"step@2%", "budget@2%", "step@5%", "budget@5%"}
    frac, r = curves["step@2%"]
    assert frac[0] == 0 and frac[-1] == 1 and r[0] == 1 and len(frac) == len(r) == 51
    frac, r = curves["budget@2%"]
    assert len(frac) == 6 and frac[-1] == pytest.approx(5 / 256)


def test_string_kind_uses_the_posterior_and_restores_modes():
    class Toy(nn.Module):
        """Logits [k sum_S (1 - x_p), 0]: entropy ln 2 on the original, lower once S is blurred."""

        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            z = 4 * sum(1 - x[:, 0, r, c] for r, c in KEY_PIXELS)
            return self.drop(torch.stack([z, torch.zeros_like(z)], 1))

    def entropy(model, xb):
        p = model.eval()(xb).softmax(-1)
        return -(p * p.log()).sum(-1)

    model = Toy().train()
    x = _images(b=2)
    m = BlurringTest(uncertainty="total", selection="all")
    m.update(model, x, _oracle_map(2))
    assert model.training and model.drop.training  # evaluated in eval mode, flags restored
    ref = BlurringTest(uncertainty=entropy, selection="all")
    ref.update(model.train(), x, _oracle_map(2))
    got, want = m.compute(), ref.compute()
    for key in want:
        assert torch.allclose(got[key], want[key]), key
    assert got["murr@2%"].item() > 0.5
    u = blurring_curves(model, x, _oracle_map(2), torch.tensor([0]), "total")
    assert torch.allclose(u[:, 0], torch.full((2,), math.log(2), dtype=torch.float64))


def test_bad_inputs():
    x = _images(b=2)
    m = BlurringTest(uncertainty=key_uncertainty)
    with pytest.raises(ValueError, match="do not match"):
        m.update(MODEL, x, torch.rand(2, H, W + 1))
    with pytest.raises(ValueError, match="NaN"):
        m.update(MODEL, x, torch.full((2, H, W), float("nan")))
    with pytest.raises(ValueError, match="unknown uncertainty"):
        BlurringTest(uncertainty="entropy")
    with pytest.raises(ValueError, match="fractions"):
        BlurringTest(fractions=(0.0,))
    m.update(MODEL, x, torch.rand(2, H, W))
    with pytest.raises(ValueError, match="same size"):
        m.update(MODEL, torch.rand(2, 1, 8, 8), torch.rand(2, 8, 8))
