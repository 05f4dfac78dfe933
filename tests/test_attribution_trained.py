"""UA-Backprop on a trained mnist5k model: completeness, and seed 000's anomaly-patch claim."""

from __future__ import annotations

import pytest
import torch

from uattr.attribution import RandomMap, UABackprop
from uattr.bayes import model_uncertainties
from uattr.data import AnomalyPatch


@pytest.fixture(scope="module")
def test_digits(trained_mc_dropout):
    _, data = trained_mc_dropout
    return torch.stack([data.test_dataset[i][0] for i in range(160)])


@pytest.mark.parametrize("kind", ["total", "aleatoric", "epistemic"])
def test_completeness_on_a_trained_model(trained_mc_dropout, test_digits, kind):
    posterior = trained_mc_dropout[0].posterior
    x = test_digits[:32]
    maps = UABackprop(posterior)(x, target=kind)
    with torch.no_grad():
        expected = getattr(model_uncertainties(posterior, x), kind)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum((1, 2)), expected, rtol=1e-5, atol=1e-7)


def _mass_in_boxes(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Share of each map's total inside its box (x_min, y_min, x_max, y_max; max exclusive)."""
    inside = torch.stack(
        [m[y0:y1, x0:x1].sum() for m, (x0, y0, x1, y1) in zip(maps, boxes.tolist(), strict=True)]
    )
    return inside / maps.sum((1, 2))


def test_epistemic_map_finds_a_pasted_anomaly_patch(trained_mc_dropout, test_digits):
    """Seed 000: for digits with a pasted noise patch, the UA-Backprop epistemic map puts more of
    its mass inside the patch box than a random map does, on >= 80% of the images whose epistemic
    uncertainty the patch raised."""
    posterior = trained_mc_dropout[0].posterior
    patched, boxes = AnomalyPatch(size=7, seed=0)(test_digits, index=torch.arange(len(test_digits)))
    with torch.no_grad():
        before = model_uncertainties(posterior, test_digits).epistemic
        after = model_uncertainties(posterior, patched).epistemic
    raised = after > before
    assert raised.sum() >= 40, "too few images to judge"  # the patch raises U_e on most digits
    x, b = patched[raised], boxes[raised]
    ua = _mass_in_boxes(UABackprop(posterior)(x, target="epistemic"), b)
    random = _mass_in_boxes(RandomMap(posterior, seed=0)(x, target="epistemic"), b)
    share = (ua > random).float().mean().item()
    assert share >= 0.8, f"UA-Backprop beat a random map on {share:.0%} of {len(x)} images"
