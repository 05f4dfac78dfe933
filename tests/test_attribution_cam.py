"""Grad-CAM, ContrastCAM, CounterfactualCAM against direct computations (the contract every
method keeps is ``test_attribution_contract.py``).

The direct computations split LeNet5 at ``conv2``: the conv2 output A is made a leaf, the rest of
the network is run from it by hand (with MCDropout's recorded masks where there are samples), and
the CAM is ``ReLU(sum_s sum_k mean_ij(dy/dA_s^k) A_s^k)`` upsampled bilinearly
(align_corners=False).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import random_images, scaled_lenet
from torch import nn

from uattr.attribution.cam import ContrastCAM, CounterfactualCAM, GradCAM, resolve_layers
from uattr.bayes import DeepEnsemble, Evidential, MCDropout, decompose_logits
from uattr.models import CifarResNet18, LeNet5

H = W = 28






def _conv2_input(net: LeNet5, x: torch.Tensor) -> torch.Tensor:
    return net.pool1(net.relu1(net.conv1(net.normalize(x))))


def _head(net: LeNet5, a: torch.Tensor, masks: tuple | None = None) -> torch.Tensor:
    """Logits from the conv2 output ``a``; ``masks`` = (m0, m1, m2) dropout masks of one sample."""
    h = net.flatten(net.pool2(net.relu2(a)))
    m0, m1, m2 = masks if masks is not None else (1.0, 1.0, 1.0)
    h = net.relu3(net.fc1(h * m0)) * m1
    h = net.relu4(net.fc2(h)) * m2
    return net.fc3(h)


def _cam(acts: list[torch.Tensor], grads: list[torch.Tensor], sign: float = 1.0) -> torch.Tensor:
    """ReLU(sum over samples and channels of sign * GAP(grad) * A), upsampled to H x W."""
    pre = sum(
        (sign * g.mean((2, 3), keepdim=True) * a).sum(1) for a, g in zip(acts, grads, strict=True)
    )
    return F.interpolate(F.relu(pre)[:, None], size=(H, W), mode="bilinear", align_corners=False)[
        :, 0
    ]


def _direct_plain(net: LeNet5, x: torch.Tensor, objective, sign: float = 1.0) -> torch.Tensor:
    with torch.enable_grad():
        a = net.conv2(_conv2_input(net, x)).detach().requires_grad_()
        (g,) = torch.autograd.grad(objective(_head(net, a)).sum(), a)
    return _cam([a.detach()], [g], sign)


# ---------------------------------------------------------------- direct computations


def test_gradcam_of_a_class_equals_direct_computation() -> None:
    net = scaled_lenet()
    x = random_images()
    target = torch.tensor([3, 0, 9])
    expected = _direct_plain(net, x, lambda z: z.gather(1, target[:, None])[:, 0])
    got = GradCAM(net, "conv2")(x, target)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert got.abs().sum() > 0
    by_module = GradCAM(net, net.conv2)(x, target)
    torch.testing.assert_close(by_module, got, rtol=0, atol=0)


def test_counterfactual_cam_is_gradcam_with_negated_weights() -> None:
    net = scaled_lenet()
    x = random_images()
    target = torch.tensor([3, 0, 9])
    expected = _direct_plain(net, x, lambda z: z.gather(1, target[:, None])[:, 0], sign=-1.0)
    got = CounterfactualCAM(net, "conv2")(x, target)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert got.abs().sum() > 0


def test_contrast_cam_default_contrast_is_second_class() -> None:
    net = scaled_lenet()
    x = random_images()
    with torch.no_grad():
        order = net(x).argsort(1, descending=True)
    p, q = order[:, 0], order[:, 1]
    method = ContrastCAM(net, "conv2")
    with torch.no_grad():
        chosen = method.contrast_classes(method.log_predictive(x), p)
    torch.testing.assert_close(chosen, q)
    expected = _direct_plain(net, x, lambda z: F.cross_entropy(z, q, reduction="none"))
    got = method(x, p)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ContrastCAM(net, "conv2", contrast=q)(x, p), got, rtol=0, atol=0)
    # When P is not the prediction, the default contrast is the most probable other class.
    with torch.no_grad():
        assert (method.contrast_classes(method.log_predictive(x), q) == p).all()


def test_contrast_cam_with_a_fixed_contrast_class() -> None:
    net = scaled_lenet()
    x = random_images()
    p = torch.tensor([1, 2, 3])
    expected = _direct_plain(
        net, x, lambda z: F.cross_entropy(z, torch.full((3,), 7), reduction="none")
    )
    torch.testing.assert_close(
        ContrastCAM(net, "conv2", contrast=7)(x, p), expected, atol=1e-6, rtol=0
    )


def test_gradcam_mc_dropout_averages_samples_before_relu() -> None:
    """Class and uncertainty targets through S fixed dropout samples (masks after conv2, so every
    sample shares A and the weights are the GAP of the S-sample target's gradient)."""
    net = scaled_lenet()
    post = MCDropout(net, num_samples=5, seed=3)
    x = random_images()
    masks = post.masks(x)
    m0, m1, m2 = (masks[n] for n in ("drop0", "drop1", "drop2"))
    target = torch.tensor([1, 4, 4])

    def direct(objective) -> torch.Tensor:
        a = net.conv2(_conv2_input(net, x)).detach().requires_grad_()
        logits = torch.stack([_head(net, a, (m0[s], m1[s], m2[s])) for s in range(5)])
        (g,) = torch.autograd.grad(objective(logits).sum(), a)
        return _cam([a.detach()], [g])

    with torch.enable_grad():
        by_class = direct(lambda z: z.mean(0).gather(1, target[:, None])[:, 0])
        by_epistemic = direct(lambda z: decompose_logits(z).epistemic)
    torch.testing.assert_close(
        GradCAM(post, "backbone.conv2")(x, target), by_class, rtol=0, atol=1e-6
    )
    got = GradCAM(post, "backbone.conv2")(x, "epistemic")
    torch.testing.assert_close(got, by_epistemic, rtol=0, atol=1e-6)
    assert got.abs().sum() > 0


def test_gradcam_ensemble_sums_members_then_relu() -> None:
    """Members have their own activations A_m: M = ReLU(sum_m sum_k alpha_mk A_m^k), not the mean
    of per-member ReLUs."""
    members = [scaled_lenet(seed=s) for s in range(3)]
    ens = DeepEnsemble(members)
    x = random_images()
    target = torch.tensor([2, 5, 7])
    with torch.enable_grad():
        acts = [m.conv2(_conv2_input(m, x)).detach().requires_grad_() for m in members]
        y = torch.stack([_head(m, a) for m, a in zip(members, acts, strict=True)]).mean(0)
        grads = torch.autograd.grad(y.gather(1, target[:, None]).sum(), acts)
    expected = _cam([a.detach() for a in acts], list(grads))
    got = GradCAM(ens, "members.*.conv2")(x, target)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    mean_of_relus = sum(_cam([a.detach()], [g]) for a, g in zip(acts, grads, strict=True))
    assert not torch.allclose(got, mean_of_relus, atol=1e-6)


def test_normalize_option_is_per_image_min_max() -> None:
    net = scaled_lenet()
    x = random_images()
    target = torch.tensor([3, 0, 9])
    raw = GradCAM(net, "conv2")(x, target)
    scaled = GradCAM(net, "conv2", normalize=True)(x, target)
    lo = raw.flatten(1).min(1).values[:, None, None]
    hi = raw.flatten(1).max(1).values[:, None, None]
    expected = torch.where(hi > lo, (raw - lo) / (hi - lo), torch.zeros_like(raw))
    torch.testing.assert_close(scaled, expected)
    assert scaled.min() >= 0 and scaled.max() <= 1


def test_resnet_layer4_runs() -> None:
    torch.manual_seed(0)
    post = MCDropout(CifarResNet18(num_classes=10), num_samples=2)
    x = torch.rand(2, 3, 32, 32)
    maps = GradCAM(post, "backbone.layer4")(x, "total")
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()


# ---------------------------------------------------------------- layers


def test_layer_resolution_and_errors() -> None:
    net = scaled_lenet()
    post = MCDropout(net, num_samples=2)
    assert resolve_layers(post, "backbone.conv2") == [net.conv2]
    assert resolve_layers(post, net.conv2) == [net.conv2]
    assert resolve_layers(post, ["backbone.conv1", "backbone.conv*"]) == [net.conv1, net.conv2]
    with pytest.raises(ValueError, match="did you mean 'backbone.conv2'"):
        GradCAM(post, "conv2")
    with pytest.raises(ValueError, match="not a submodule"):
        GradCAM(post, nn.Conv2d(1, 1, 3))
    with pytest.raises(ValueError, match="feature maps"):
        GradCAM(net, "fc1")(random_images(), torch.tensor([0, 1, 2]))


def test_in_place_modified_layer_output_is_rejected() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * H * W, 3)
    )
    with pytest.raises(RuntimeError, match="modified in place"):
        GradCAM(model, "0")(random_images(), torch.tensor([0, 1, 2]))


def test_hooks_are_removed_even_on_errors() -> None:
    net = scaled_lenet()
    method = GradCAM(net, "conv2")
    with pytest.raises(ValueError):
        method(random_images(), torch.tensor([0, 1, 99]))
    assert not net.conv2._forward_hooks
    method(random_images(), torch.tensor([0, 1, 2]))
    assert not net.conv2._forward_hooks


# ---------------------------------------------------------------- arguments and posteriors


def test_contrast_cam_argument_errors() -> None:
    net = scaled_lenet()
    x = random_images()
    with pytest.raises(ValueError, match="explains class scores only"):
        ContrastCAM(net, "conv2")(x, "epistemic")
    with pytest.raises(ValueError, match="Q != P"):
        ContrastCAM(net, "conv2", contrast=1)(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="contrast must be class indices"):
        ContrastCAM(net, "conv2", contrast=10)(x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="contrast must be"):
        ContrastCAM(net, "conv2", contrast=1.5)


@pytest.mark.parametrize("posterior", ["mc_dropout", "ensemble", "evidential"])
def test_maps_are_nonnegative_on_every_posterior(posterior: str) -> None:
    if posterior == "mc_dropout":
        model, layer = MCDropout(scaled_lenet(), num_samples=3), "backbone.conv2"
        kinds = ("total", "aleatoric", "epistemic")
    elif posterior == "ensemble":
        model, layer = DeepEnsemble([scaled_lenet(seed=s) for s in range(2)]), "members.*.conv2"
        kinds = ("total", "aleatoric", "epistemic")
    else:
        model, layer = Evidential(scaled_lenet()), "backbone.conv2"
        kinds = ("total", "aleatoric", "epistemic", "vacuity")
    x = random_images(2)
    for cls in (GradCAM, CounterfactualCAM):
        for kind in kinds:
            maps = cls(model, layer)(x, kind)
            assert maps.shape == (2, H, W) and torch.isfinite(maps).all() and (maps >= 0).all()
    for cls in (GradCAM, CounterfactualCAM, ContrastCAM):
        maps = cls(model, layer)(x, torch.tensor([3, 5]))
        assert maps.shape == (2, H, W) and torch.isfinite(maps).all()
