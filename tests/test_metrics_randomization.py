"""Parameter randomisation: SSIM of unchanged maps is 1, the model is untouched, cascade order."""

import pytest
import torch
from torch import nn

from uattr.metrics import RandomizationSanity, map_ssim, randomizable_layers

H = W = 10


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * H * W, 16),
        nn.Tanh(),
        nn.Linear(16, 3),
    ).double()


def _x(b=3, seed=1):
    return torch.rand(
        b, 1, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def grad_x_input(model, x):
    """Gradient x input of class 0, usable under no_grad / inference_mode callers."""
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    return (g * x).sum(1).detach()


def test_ssim_of_a_map_with_itself_is_one():
    maps = torch.rand(4, H, W)
    assert torch.allclose(map_ssim(maps, maps), torch.ones(4, dtype=torch.float64))
    # Scaling and shifting do not matter (maps are min-max normalised); noise does.
    assert torch.allclose(map_ssim(maps, 3 * maps + 1), torch.ones(4, dtype=torch.float64))
    assert (map_ssim(maps, torch.rand(4, H, W)) < 0.5).all()
    fixed = maps[:3]
    m = RandomizationSanity(lambda model: fixed)
    m.update(_model())
    out = m.compute()
    assert set(out) == {"ssim@5", "ssim@3", "ssim@0", "ssim_final"}
    assert all(v.item() == pytest.approx(1.0) for v in out.values())


def test_cascade_order_and_the_original_is_untouched():
    model, x = _model(), _x()
    assert [n for n, _ in randomizable_layers(model)] == ["5", "3", "0"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    original_maps = grad_x_input(model, x)
    m = RandomizationSanity(grad_x_input, seed=0)
    m.update(model, x)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(grad_x_input(model, x), original_maps)
    out = m.compute()
    assert m.layer_names == ("5", "3", "0")
    assert out["ssim_final"].item() < 0.9  # the gradient of a random network is a different map
    assert torch.equal(out["ssim_final"], out["ssim@0"])


def test_deterministic_global_rng_untouched_and_inference_mode():
    model, x = _model(), _x()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = RandomizationSanity(grad_x_input, seed=4)
    a.update(model, x)
    assert torch.equal(torch.get_rng_state(), state)
    b = RandomizationSanity(grad_x_input, seed=4)
    with torch.inference_mode():  # as in trainer.validate / test
        b.update(model, x)
    for key, value in a.compute().items():
        assert torch.allclose(b.compute()[key], value), key


def test_two_updates_equal_one_reset_and_layers_option():
    model, x = _model(), _x(4)
    one = RandomizationSanity(grad_x_input, layers=["5", "3"])
    one.update(model, x)
    two = RandomizationSanity(grad_x_input, layers=["5", "3"])
    two.update(model, x[:1])
    two.update(model, x[1:])
    assert set(one.compute()) == {"ssim@5", "ssim@3", "ssim_final"}
    for key, value in one.compute().items():
        assert torch.allclose(two.compute()[key], value), key
    two.reset()
    two.update(model, x[:2])
    fresh = RandomizationSanity(grad_x_input, layers=["5", "3"])
    fresh.update(model, x[:2])
    assert torch.allclose(two.compute()["ssim_final"], fresh.compute()["ssim_final"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="not modules"):
        RandomizationSanity(grad_x_input, layers=["fc9"]).update(_model(), _x())
    with pytest.raises(ValueError, match="no layer"):
        RandomizationSanity(lambda m: torch.rand(1, H, W)).update(nn.ReLU())
    with pytest.raises(ValueError, match="smaller sigma"):
        map_ssim(torch.rand(1, 4, 4), torch.rand(1, 4, 4))
    with pytest.raises(TypeError, match="callable"):
        RandomizationSanity(explain=None)
