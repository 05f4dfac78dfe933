"""The contract every registered attribution method keeps, checked once for all of them.

Each method of :data:`uattr.attribution.registry.METHODS` is built with ``build_method`` on a small
random MC-dropout LeNet5 posterior (S = 3), with whatever its metadata says it needs: the readout
gets an (untrained, estimated) ``Readout`` on the same posterior, Per-Sample IBA ``estimate`` on
random images. The checks: train/eval flags restored exactly; ``no_grad`` / ``inference_mode``
callers; each image's map independent of the rest of the batch; clear errors for bad inputs and
targets; ``target=None`` is the predicted class; a callable target equals the named kind; the
class metadata is consistent with what the method accepts; every posterior kind works.
Method-specific known answers live in the per-method test files.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import random_images, scaled_lenet
from torch import nn

from uattr.attribution import Readout
from uattr.attribution.base import EXPLAINABLE, check_target, class_score
from uattr.attribution.registry import (
    METHODS,
    build_method,
    check_uncertainty_methods,
    default_cam_layer,
    method_class,
)
from uattr.bayes import DeepEnsemble, Evidential, MCDropout, predictive_distribution, uncertainty

H = W = 28
NAMES = list(METHODS)
LABELS = {
    "ua_backprop": "UA-Backprop",
    "gradient": "Gradient",
    "smoothgrad": "SmoothGrad",
    "integrated_gradients": "Integrated Gradients",
    "blur_ig": "Blur IG",
    "fullgrad": "FullGrad",
    "gradcam": "Grad-CAM",
    "counterfactual_cam": "Counterfactual CAM",
    "contrast_cam": "Contrast CAM",
    "per_sample_iba": "Per-Sample IBA",
    "readout": "Readout IBA",
    "random": "Random map",
}






def _make(name: str, model: nn.Module):
    """``build_method(name, model)`` with what the class's metadata says it needs."""
    cls = METHODS[name]
    kwargs = {}
    if "readout" in cls.required_kwargs:
        prefix = default_cam_layer(model).rpartition(".")[0]
        layers = [f"{prefix}.{n}" if prefix else n for n in ("conv1", "conv2", "fc1")]
        readout = Readout(model, default_cam_layer(model), layers, input_shape=(1, H, W))
        readout.estimate(random_images(32, seed=5), n_samples=32)
        kwargs["readout"] = readout
    method = build_method(name, model, **kwargs)
    if cls.needs_statistics:
        method.estimate(random_images(32, seed=5), n_samples=32)
    return method


def _kind_or_class(name: str, b: int):
    """An uncertainty target if the method explains one, else class indices [b]."""
    return "epistemic" if METHODS[name].explains_uncertainty else torch.tensor([1, 4, 7, 0])[:b]


def _rows(target, b0: int, b1: int):
    return target[b0:b1] if isinstance(target, torch.Tensor) else target


@pytest.fixture(scope="module")
def posterior() -> MCDropout:
    return MCDropout(scaled_lenet(scale=5.0), num_samples=3, seed=0)


@pytest.fixture(scope="module")
def methods(posterior: MCDropout) -> dict:
    return {name: _make(name, posterior) for name in NAMES}


# ---------------------------------------------------------------- metadata and the registry


def test_registry_order_and_labels() -> None:
    assert NAMES == list(LABELS)  # the report tables' order
    assert {name: cls.label for name, cls in METHODS.items()} == LABELS


@pytest.mark.parametrize("name", NAMES)
def test_metadata_is_consistent(name: str) -> None:
    cls = METHODS[name]
    assert isinstance(cls.label, str) and cls.label
    assert cls.explains and cls.explains <= EXPLAINABLE
    assert cls.explains_uncertainty == ("uncertainty" in cls.explains)
    assert cls.explains_class == ("class" in cls.explains)
    assert not cls.accepts_callable or cls.explains_uncertainty
    parameters = inspect.signature(cls).parameters
    assert ("layer" in parameters) == cls.needs_layer
    assert all(k in parameters for k in cls.required_kwargs)
    assert not cls.needs_statistics or callable(getattr(cls, "estimate", None))
    assert method_class(name) is cls


def test_registry_errors_and_uncertainty_methods(posterior: MCDropout) -> None:
    with pytest.raises(ValueError, match="unknown attribution method 'lime'.*ua_backprop"):
        build_method("lime", posterior)
    with pytest.raises(ValueError, match="unknown attribution method"):
        method_class("lime")
    with pytest.raises(ValueError, match=r"'readout' method .* needs readout=<"):
        build_method("readout", posterior)
    assert build_method("gradcam", posterior).layers == [posterior.backbone.conv2]
    names, kwargs = check_uncertainty_methods(["ua_backprop", "readout"], "epistemic")
    assert names == ("ua_backprop", "readout") and kwargs == {}
    with pytest.raises(ValueError, match="contrast_cam explains class scores only"):
        check_uncertainty_methods(["gradient", "contrast_cam"], "total")
    with pytest.raises(ValueError, match="not in methods"):
        check_uncertainty_methods("gradient", "total", {"fullgrad": {}})


def test_check_target_forms() -> None:
    assert torch.equal(check_target(3, 2), torch.tensor([3, 3]))
    assert check_target(torch.tensor([1, 2], dtype=torch.int), 2).dtype == torch.long
    assert check_target(None, 2) is None and check_target("vacuity", 2) == "vacuity"
    fn = lambda model, x: x.sum((1, 2, 3))  # noqa: E731
    assert check_target(fn, 2) is fn
    with pytest.raises(TypeError, match="LongTensor"):
        check_target(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(TypeError):
        check_target(True, 2)


def test_class_score_follows_the_posterior_predicates() -> None:
    """One rule for "evidential": a Dirichlet posterior scores its backbone's (pre-evidence)
    logit when it has a backbone, else log alpha; a sampling posterior its mean logit."""
    net, x, target = scaled_lenet(scale=5.0), random_images(), torch.tensor([1, 2, 3])
    rows = torch.arange(3)
    with torch.no_grad():
        torch.testing.assert_close(class_score(Evidential(net), x, target), net(x)[rows, target])

        class AlphaOnly(nn.Module):
            def alpha(self, x: torch.Tensor) -> torch.Tensor:
                return torch.relu(net(x)) + 1

        expected = (torch.relu(net(x)) + 1).log()[rows, target]
        torch.testing.assert_close(class_score(AlphaOnly(), x, target), expected)
        post = MCDropout(net, num_samples=3)
        mean = post.sample_logits(x).mean(0)[rows, target]
        torch.testing.assert_close(class_score(post, x, target), mean)


# ---------------------------------------------------------------- every method


@pytest.mark.parametrize("name", NAMES)
def test_modes_restored_and_grad_contexts(posterior: MCDropout, methods: dict, name: str) -> None:
    method, x, target = methods[name], random_images(), _kind_or_class(name, 3)
    posterior.train()
    posterior.backbone.drop1.eval()  # a mixed pattern that must survive exactly
    flags = [m.training for m in posterior.modules()]
    try:
        plain = method(x, target)
        assert [m.training for m in posterior.modules()] == flags
        with torch.no_grad():
            under_no_grad = method(x, target)
        with torch.inference_mode():
            under_inference = method(x, target)
        assert [m.training for m in posterior.modules()] == flags
    finally:
        posterior.eval()
    torch.testing.assert_close(under_no_grad, plain, rtol=0, atol=0)  # also: deterministic
    torch.testing.assert_close(under_inference.clone(), plain, rtol=0, atol=0)
    assert plain.shape == (3, H, W) and not plain.requires_grad and torch.isfinite(plain).all()
    assert all(p.grad is None for p in posterior.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(methods: dict, name: str) -> None:
    if name == "random":
        pytest.skip("a random map is seeded per batch position, by design (RandomMap docstring)")
    method, x = methods[name], random_images(4)
    other = x.clone()
    other[[0, 2, 3]] = random_images(3, seed=7)
    # A CAM keeps one sign of its evidence, so some targets give all-zero maps on this network:
    # check several, and that at least one is not trivial.
    kinds = ["epistemic", "total"] if METHODS[name].explains_uncertainty else []
    scales = []
    for target in [*kinds, torch.tensor([1, 4, 7, 0])]:
        full = method(x, target)
        mixed = method(other, target)
        scale = full.abs().max()
        scales.append(scale)
        for b in range(4):
            alone = method(x[b : b + 1], _rows(target, b, b + 1))
            torch.testing.assert_close(alone[0], full[b], rtol=1e-5, atol=1e-5 * scale)
        torch.testing.assert_close(mixed[1], full[1], rtol=1e-5, atol=1e-5 * scale)
    assert max(scales) > 0


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_clear_errors(methods: dict, name: str) -> None:
    method, x, target = methods[name], random_images(), _kind_or_class(name, 3)
    bad = x.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        method(bad, target)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        method(x[0], target)
    with pytest.raises(ValueError, match="empty batch"):
        method(x[:0], _rows(target, 0, 0))
    with pytest.raises(TypeError, match="floating-point"):
        method((x * 255).to(torch.uint8), target)
    with pytest.raises(ValueError, match="unknown target 'entropy'"):
        method(x, "entropy")
    with pytest.raises(ValueError, match=r"shape \[B\] = \[3\]"):
        method(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="target must be"):
        method(x, torch.tensor([0.0, 1.0, 2.0]))
    if METHODS[name].class_dependent:
        with pytest.raises(ValueError, match="out of range"):
            method(x, torch.tensor([0, 1, 10]))
    if METHODS[name].explains_uncertainty:
        with pytest.raises(ValueError, match="vacuity"):
            method(x, "vacuity")  # an MC-dropout posterior has no vacuity


@pytest.mark.parametrize("name", NAMES)
def test_target_none_is_the_predicted_class(posterior: MCDropout, methods: dict, name: str):
    x = random_images(4, seed=3)
    with torch.no_grad():
        predicted = predictive_distribution(posterior, x).argmax(-1)
    torch.testing.assert_close(methods[name](x), methods[name](x, predicted), rtol=0, atol=0)
    torch.testing.assert_close(methods[name](x, None), methods[name](x), rtol=0, atol=0)


def _epistemic(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return uncertainty(model, x, "epistemic")


@pytest.mark.parametrize("name", NAMES)
def test_callable_target_equals_the_named_kind(methods: dict, name: str) -> None:
    method, x = methods[name], random_images()
    if not METHODS[name].accepts_callable:
        with pytest.raises(TypeError, match="cannot explain a callable target"):
            method(x, _epistemic)
        return
    torch.testing.assert_close(method(x, _epistemic), method(x, "epistemic"), rtol=0, atol=0)

    def wrong_shape(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return uncertainty(model, x, "total")[:, None]

    if METHODS[name].class_dependent:  # the random map never calls its target
        with pytest.raises(ValueError, match=r"one value per image"):
            method(x, wrong_shape)


@pytest.mark.parametrize("name", NAMES)
def test_class_only_methods_reject_uncertainty_targets(methods: dict, name: str) -> None:
    method, x = methods[name], random_images()
    if METHODS[name].explains_uncertainty:
        assert method(x, "total").shape == (3, H, W)
    else:
        with pytest.raises(ValueError, match="explains class scores only.*'total'"):
            method(x, "total")
    if METHODS[name].explains_class:
        assert method(x, torch.tensor([2, 5, 9])).shape == (3, H, W)


def _models() -> dict[str, tuple[nn.Module, tuple[str, ...]]]:
    return {
        "ensemble": (
            DeepEnsemble([scaled_lenet(seed=s, scale=5.0) for s in range(2)]),
            ("total", "aleatoric", "epistemic"),
        ),
        "evidential": (Evidential(scaled_lenet(scale=1.0)), ("total", "epistemic", "vacuity")),
        "plain": (scaled_lenet(scale=5.0), ("total", "aleatoric")),
    }


@pytest.mark.parametrize("kind", ["ensemble", "evidential", "plain"])
@pytest.mark.parametrize("name", NAMES)
def test_every_posterior_kind(name: str, kind: str) -> None:
    model, kinds = _models()[kind]
    method, x = _make(name, model), random_images(2)
    targets = [*kinds] if METHODS[name].explains_uncertainty else []
    for target in [*targets, torch.tensor([1, 2]), None]:
        maps = method(x, target)
        assert maps.shape == (2, H, W) and torch.isfinite(maps).all(), target
