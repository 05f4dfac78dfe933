"""Gradient, SmoothGrad, Integrated Gradients and Blur IG: known answers and their arguments.

Known answers come from toy models whose attributions are analytic (a linear model's gradient is
its weight) and from completeness (path methods sum to F(x) - F(x')). The contract every method
keeps (modes, grad contexts, batch independence, errors, targets) is
``test_attribution_contract.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from uattr.attribution.base import explained_output
from uattr.attribution.gradients import (
    BlurIG,
    Gradient,
    IntegratedGradients,
    SmoothGrad,
    gaussian_blur,
    integration_rule,
)
from uattr.bayes import MCDropout, uncertainty
from uattr.models import LeNet5

H = W = 28


class Linear(nn.Module):
    """logits = weight . x + bias on flattened [C, H, W] images (no hidden layer)."""

    def __init__(self, channels: int = 2, classes: int = 3, size: int = H) -> None:
        super().__init__()
        self.fc = nn.Linear(channels * size * size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))

    def weight_image(self, c: int) -> torch.Tensor:
        return self.fc.weight[c].detach().view(-1, H, W)


def _lenet(scale: float = 5.0, seed: int = 0) -> LeNet5:
    """A random LeNet5 whose last layer is scaled up, so predictions are not uniform: the
    uncertainties then change by a few 0.01 nats between a black image and x, enough for a
    relative completeness check."""
    torch.manual_seed(seed)
    net = LeNet5(dropout=0.3)
    with torch.no_grad():
        net.fc3.weight.mul_(scale)
        net.fc3.bias.mul_(scale)
    return net


def _images(b: int = 3, channels: int = 1, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, channels, H, W, generator=gen)


@pytest.fixture(scope="module")
def post() -> MCDropout:
    return MCDropout(_lenet(), num_samples=4, seed=0)


# ---------------------------------------------------------------- known answers


def test_gradient_of_linear_model_is_its_weight() -> None:
    torch.manual_seed(0)
    model = Linear()
    x = _images(2, channels=2)
    target = torch.tensor([2, 0])
    w = torch.stack([model.weight_image(2), model.weight_image(0)])  # [B, C, H, W]
    torch.testing.assert_close(Gradient(model, reduce="sum")(x, target), w.sum(1))
    torch.testing.assert_close(Gradient(model)(x, target), w.abs().sum(1))
    torch.testing.assert_close(Gradient(model, reduce="input_x_grad")(x, target), (x * w).sum(1))


def test_smoothgrad_with_zero_noise_equals_gradient(post: MCDropout) -> None:
    x = _images()
    for reduce in ("abs_sum", "sum", "input_x_grad"):
        expected = Gradient(post, reduce=reduce)(x, "epistemic")
        got = SmoothGrad(post, num_samples=3, noise=0.0, reduce=reduce)(x, "epistemic")
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)


def test_smoothgrad_of_linear_model_is_the_weight_at_any_noise() -> None:
    torch.manual_seed(0)
    model = Linear()
    x = _images(2, channels=2)
    target = torch.tensor([1, 1])
    w = model.weight_image(1)
    got = SmoothGrad(model, num_samples=4, noise=0.3, reduce="sum")(x, target)
    torch.testing.assert_close(got, w.sum(0).expand(2, H, W))
    squared = SmoothGrad(model, num_samples=4, noise=0.3, magnitude=True)(x, target)
    torch.testing.assert_close(squared, (w * w).sum(0).expand(2, H, W))


def test_smoothgrad_noise_scale_follows_pair() -> None:
    """sigma = noise * (max - min) per image: the mean absolute perturbation matches it."""
    sg = SmoothGrad(nn.Identity(), num_samples=200, noise=0.15)
    eps = sg.noise_patterns((1, H, W))
    assert eps.shape == (200, 1, H, W)
    assert abs(eps.std().item() - 1.0) < 0.01
    torch.testing.assert_close(eps, sg.noise_patterns((1, H, W)))  # seeded


def test_smoothgrad_chunking_matches_one_pass(post: MCDropout) -> None:
    x = _images()
    one = SmoothGrad(post, num_samples=5)(x, "total")
    chunked = SmoothGrad(post, num_samples=5, internal_batch_size=2 * x.shape[0])(x, "total")
    torch.testing.assert_close(chunked, one, rtol=1e-5, atol=1e-8)


def test_integrated_gradients_of_linear_model() -> None:
    """IG of a linear model is exactly (x - x') * w, for every rule."""
    torch.manual_seed(0)
    model = Linear()
    x = _images(2, channels=2)
    target = torch.tensor([0, 2])
    w = torch.stack([model.weight_image(0), model.weight_image(2)])
    for method in ("riemann_trapezoid", "gausslegendre", "riemann_middle"):
        got = IntegratedGradients(model, steps=7, baseline=0.5, method=method)(x, target)
        torch.testing.assert_close(got, ((x - 0.5) * w).sum(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["total", "aleatoric", "epistemic"])
def test_integrated_gradients_completeness_uncertainty(post: MCDropout, kind: str) -> None:
    """Sum of IG == U(x) - U(0) within 1e-2 relative at 64 steps (trapezoid rule)."""
    x = _images()
    ig = IntegratedGradients(post, steps=64)
    maps = ig(x, kind)
    with torch.no_grad():
        diff = uncertainty(post, x, kind) - uncertainty(post, torch.zeros_like(x), kind)
    assert (diff.abs() > 0.01).all(), "the check needs a visible uncertainty change"
    rel = (maps.sum((1, 2)) - diff).abs() / diff.abs()
    assert (rel < 1e-2).all(), rel
    delta = ig.convergence_delta(x, kind, maps)
    torch.testing.assert_close(delta, maps.sum((1, 2)) - diff, rtol=1e-4, atol=1e-7)


def test_integrated_gradients_completeness_class_plain_model() -> None:
    net = _lenet(scale=1.0).eval()
    x = _images()
    black = torch.zeros(1, H, W)  # a tensor baseline [C, H, W], broadcast to the batch
    with torch.no_grad():
        change = net(x) - net(black.expand_as(x))
    # The class whose logit moves most along the path: a relative check needs a visible change.
    target = change.abs().argmax(1)
    diff = change.gather(1, target[:, None])[:, 0]
    ig = IntegratedGradients(net, steps=64, baseline=black)
    maps = ig(x, target)
    rel = (maps.sum((1, 2)) - diff).abs() / diff.abs()
    assert (rel < 1e-2).all(), rel
    torch.testing.assert_close(
        ig.convergence_delta(x, target, maps), maps.sum((1, 2)) - diff, rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle", "riemann_left"])
def test_integrated_gradients_equals_captum(post: MCDropout, method: str) -> None:
    from captum.attr import IntegratedGradients as CaptumIG

    x = _images()
    ours = IntegratedGradients(post, steps=16, method=method)(x, "epistemic")
    with torch.enable_grad():
        theirs = CaptumIG(lambda r: uncertainty(post, r, "epistemic")).attribute(
            x.clone(), baselines=0.0, n_steps=16, method=method
        )
    torch.testing.assert_close(ours, theirs.sum(1), rtol=1e-4, atol=1e-7)


def test_integration_rules_integrate_exactly() -> None:
    for method in ("riemann_trapezoid", "gausslegendre", "riemann_middle", "riemann_left"):
        a, w = integration_rule(method, 8)
        assert a.min() >= 0 and a.max() <= 1
        torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    a, w = integration_rule("gausslegendre", 4)  # exact up to degree 7
    torch.testing.assert_close((w * a**7).sum(), torch.tensor(1 / 8, dtype=torch.float64))


def test_integrated_gradients_chunking_and_abs(post: MCDropout) -> None:
    x = _images()
    signed = IntegratedGradients(post, steps=6)(x, "total")
    chunked = IntegratedGradients(post, steps=6, internal_batch_size=7)(x, "total")
    torch.testing.assert_close(chunked, signed, rtol=1e-5, atol=1e-8)
    absolute = IntegratedGradients(post, steps=6, abs=True)(x, "total")
    torch.testing.assert_close(absolute, signed.abs())  # one channel: |sum| == sum |.|


def test_gaussian_blur_matches_scipy() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _images(2, channels=3)
    for sigma in (0.3, 1.0, 2.7):
        ours = gaussian_blur(x, sigma)
        ref = np.stack(
            [
                ndimage.gaussian_filter(
                    img.permute(1, 2, 0).numpy(), [sigma, sigma, 0], mode="constant"
                )
                for img in x
            ]
        )
        torch.testing.assert_close(
            ours, torch.from_numpy(ref).permute(0, 3, 1, 2), atol=1e-6, rtol=0
        )
    per_image = gaussian_blur(x, torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(per_image[0], x[0])
    torch.testing.assert_close(per_image[1], gaussian_blur(x[1:], 2.0)[0])


def test_blur_ig_completeness_linear_model() -> None:
    """For F = w.x + b the path integral is F(x) - F(blur(x, max_sigma)) up to discretisation."""
    torch.manual_seed(0)
    model = Linear()
    x = _images(2, channels=2)
    target = torch.tensor([0, 1])
    method = BlurIG(model, steps=100, max_sigma=3.0)
    maps = method(x, target)
    with torch.no_grad():
        diff = explained_output(model, x, target) - explained_output(
            model, gaussian_blur(x, 3.0), target
        )
    rel = (maps.sum((1, 2)) - diff).abs() / diff.abs()
    assert (rel < 1e-2).all(), rel
    torch.testing.assert_close(
        method.convergence_delta(x, target, maps), maps.sum((1, 2)) - diff, rtol=1e-4, atol=1e-6
    )


def test_blur_ig_uncertainty_and_options(post: MCDropout) -> None:
    x = _images()
    method = BlurIG(post, steps=40)
    maps = method(x, "epistemic")
    delta = method.convergence_delta(x, "epistemic", maps)
    with torch.no_grad():
        diff = uncertainty(post, x, "epistemic") - uncertainty(
            post, gaussian_blur(x, 3.0), "epistemic"
        )
    assert (delta.abs() < 0.05 * diff.abs() + 1e-4).all(), (delta, diff)
    one = BlurIG(post, steps=6)(x, "epistemic")
    chunked = BlurIG(post, steps=6, internal_batch_size=7)(x, "epistemic")
    torch.testing.assert_close(chunked, one, rtol=1e-5, atol=1e-8)
    sq = BlurIG(post, steps=8, sqrt=True)
    assert sq.sigmas()[-1] == 3.0 and sq.sigmas()[1] > BlurIG(post, steps=8).sigmas()[1]


# ---------------------------------------------------------------- arguments


def test_constructor_arguments_are_checked(post: MCDropout) -> None:
    with pytest.raises(ValueError, match="reduce must be one of"):
        Gradient(post, reduce="max")
    with pytest.raises(ValueError, match="magnitude=True"):
        SmoothGrad(post, magnitude=True, reduce="input_x_grad")
    with pytest.raises(ValueError, match="num_samples"):
        SmoothGrad(post, num_samples=0)
    with pytest.raises(ValueError, match="method must be one of"):
        IntegratedGradients(post, method="simpson")
    with pytest.raises(ValueError, match="does not broadcast"):
        IntegratedGradients(post, baseline=torch.zeros(2, 5, 5))(_images(), "total")
    with pytest.raises(ValueError, match="max_sigma"):
        BlurIG(post, max_sigma=0)
    with pytest.raises(ValueError, match="internal_batch_size must be an int >= 1"):
        SmoothGrad(post, internal_batch_size=0)


def test_old_argument_name_says_the_new_one(post: MCDropout) -> None:
    """SmoothGrad's chunk size has Captum's name, like IG's and Blur IG's; no silent alias."""
    with pytest.raises(TypeError, match="renamed to 'internal_batch_size'"):
        SmoothGrad(post, batch_size=8)
    assert SmoothGrad(post, internal_batch_size=8).internal_batch_size == 8
