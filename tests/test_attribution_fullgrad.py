"""FullGrad and the full-gradient decomposition: completeness, bias extraction, reference saliency.

Completeness (Srinivas & Fleuret 2019, eq. 2: f(x) = grad_x f . x + sum_l grad_{b_l} f . b_l) holds
exactly for ReLU/max-pool networks in eval mode with a fixed dropout mask, so it checks that every
bias is found and counted once: conv and linear biases, folded BatchNorm biases (with non-trivial
running statistics) and the Normalize layer's -mean/std.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_batchnorm
from torch import nn

from uattr.attribution.bias_gradients import bias_modules, effective_bias
from uattr.attribution.fullgrad import FullGrad, full_gradient_decomposition
from uattr.bayes import DeepEnsemble, Evidential, MCDropout
from uattr.models import CifarResNet18, LeNet5


def _images(b: int = 3, channels: int = 1, size: int = 28, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _lenet(seed: int = 0, dropout: float = 0.5) -> LeNet5:
    torch.manual_seed(seed)
    net = LeNet5(dropout=dropout)
    with torch.no_grad():  # non-trivial biases everywhere, so each one matters
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.bias.uniform_(-0.5, 0.5)
    return net




def _assert_complete(d, rtol: float = 1e-4) -> None:
    scale = d.output.abs().max()
    assert scale > 1e-2
    torch.testing.assert_close(d.reconstruction, d.output, rtol=0, atol=rtol * scale)


def test_completeness_lenet_fixed_dropout_mask():
    model, x = MCDropout(_lenet(), num_samples=3), _images()
    target = torch.tensor([0, 4, 9])
    d = full_gradient_decomposition(model, x, target)
    with torch.no_grad():
        expected = model.sample_logits(x).mean(0)[torch.arange(3), target]
    torch.testing.assert_close(d.output, expected)
    _assert_complete(d)
    assert list(d.bias_terms) == [
        f"backbone.{n}" for n in ("normalize", "conv1", "conv2", "fc1", "fc2", "fc3")
    ]
    # Every bias matters: dropping any one term (the Normalize bias included) breaks completeness.
    for name, term in d.bias_terms.items():
        assert (term.abs() > 1e-3 * d.output.abs().max()).any(), name


def test_completeness_one_dropout_sample_equals_that_sample_logit():
    """Sample s of MCDropout alone (S = 1 of the same masks) is complete for its own logit."""
    model, x = MCDropout(_lenet(), num_samples=1), _images()
    d = full_gradient_decomposition(model, x, 2)
    _assert_complete(d)


def test_completeness_resnet_with_batchnorm_stats_and_inplace_residual():
    torch.manual_seed(0)
    net = CifarResNet18(num_classes=10, dropout=0.5)
    randomise_batchnorm(net)
    model, x = MCDropout(net, num_samples=2), _images(b=2, channels=3, size=32)
    d = full_gradient_decomposition(model, x, torch.tensor([1, 7]))
    _assert_complete(d)
    names = list(d.bias_terms)
    assert "backbone.normalize" in names and "backbone.fc" in names
    assert sum("bn" in n or "downsample.1" in n for n in names) == 20  # 1 + 8 blocks x 2 + 3
    assert model.training is True and net.bn1.training is True  # modes restored


@pytest.mark.parametrize("kind", ["plain", "ensemble", "evidential"])
def test_completeness_other_model_kinds(kind):
    if kind == "plain":
        model = _lenet()
    elif kind == "ensemble":
        model = DeepEnsemble.from_backbone(_lenet(), num_members=3)
    else:
        model = Evidential(_lenet())
    d = full_gradient_decomposition(model, _images(), torch.tensor([3, 3, 5]))
    _assert_complete(d)


def test_inplace_relu_after_conv_is_handled():
    """A gradient edge is fixed when the layer returns, so an in-place ReLU on a conv's output
    does not turn the conv's bias gradient into the ReLU output's."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.relu = nn.ReLU(inplace=True)
            self.fc = nn.Linear(4 * 8 * 8, 3)

        def forward(self, x):
            h = self.relu(self.conv(x))
            h = self.bn(h)
            h += 0.0  # in place on the BN output
            return self.fc(F.max_pool2d(h, 2).flatten(1))

    torch.manual_seed(0)
    net = Net()
    randomise_batchnorm(net)
    d = full_gradient_decomposition(net, _images(b=4, size=16), torch.tensor([0, 1, 2, 0]))
    _assert_complete(d)


def test_effective_bias_folds_batchnorm():
    bn = nn.BatchNorm2d(3).eval()
    randomise_batchnorm(bn)
    bias, dim = effective_bias(bn)
    h = torch.zeros(1, 3, 1, 1)
    torch.testing.assert_close(bias, bn(h).flatten())  # BN(0) is its bias
    assert dim == 1
    assert effective_bias(nn.Conv2d(1, 2, 3, bias=False)) is None
    assert [n for n, _ in bias_modules(CifarResNet18())][:3] == ["normalize", "bn1", "layer1.0.bn1"]
    with pytest.raises(ValueError, match="batch statistics"):
        effective_bias(nn.BatchNorm2d(3).train())


def _reference_fullgrad(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """idiap/fullgrad-saliency's FullGrad.saliency, written out for a plain LeNet5."""
    model.eval()
    x = x.clone().requires_grad_(True)
    outputs = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            outputs[name] = (module, output)

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in bias_modules(model)]
    logits = model(x)
    for h in handles:
        h.remove()
    logits.gather(1, target[:, None]).sum().backward()

    def post(t):  # _postProcess
        t = t.abs()
        t = t - t.flatten(1).min(1).values.view(-1, 1, 1, 1)
        return t / (t.flatten(1).max(1).values.view(-1, 1, 1, 1) + 1e-6)

    cam = post(x.grad * x).sum(1, keepdim=True)
    for module, out in outputs.values():
        if out.dim() == 4:
            bias = effective_bias(module)[0]
            g = post(out.grad * bias.view(1, -1, 1, 1))
            cam = cam + F.interpolate(
                g, size=x.shape[-2:], mode="bilinear", align_corners=True
            ).sum(1, keepdim=True)
    return cam[:, 0].detach()


def test_saliency_matches_reference_implementation():
    net, x, target = _lenet(), _images(), torch.tensor([1, 2, 3])
    maps = FullGrad(net)(x, target)
    torch.testing.assert_close(maps, _reference_fullgrad(net, x, target), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["total", "aleatoric", "epistemic", "class"])
def test_fullgrad_of_uncertainty_and_class(target):
    model, x = MCDropout(_lenet(), num_samples=3), _images()
    target = torch.tensor([0, 1, 2]) if target == "class" else target
    maps = FullGrad(model)(x, target)
    assert maps.shape == (3, 28, 28) and torch.isfinite(maps).all() and (maps >= 0).all()
    # Input term + Normalize + conv1 + conv2 maps, each rescaled to [0, 1] per channel-sum.
    assert maps.amax((1, 2)).max() <= 1 + 1 + 6 + 16 + 1e-4


def test_fullgrad_on_evidential_vacuity_and_ensemble():
    x = _images()
    maps = FullGrad(Evidential(_lenet()))(x, "vacuity")
    assert maps.shape == (3, 28, 28) and torch.isfinite(maps).all()
    ensemble = DeepEnsemble.from_backbone(_lenet(), num_members=2)
    maps = FullGrad(ensemble)(x, "epistemic")
    assert maps.shape == (3, 28, 28) and torch.isfinite(maps).all()


def test_decomposition_restores_modes_and_runs_under_inference_mode():
    """The decomposition (a function, not a method: the contract test does not see it) keeps
    every flag and works when the caller disabled gradients."""
    model = MCDropout(_lenet(), num_samples=2)
    model.train()
    model.backbone.conv1.eval()
    before = [m.training for m in model.modules()]
    target = torch.tensor([0, 1, 2])
    expected = full_gradient_decomposition(model, _images(), target)
    assert [m.training for m in model.modules()] == before
    with torch.inference_mode():
        d = full_gradient_decomposition(model, _images(), target)
    assert [m.training for m in model.modules()] == before
    torch.testing.assert_close(d.output.clone(), expected.output)
    _assert_complete(d)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        predicted = model.sample_logits(_images()).softmax(-1).mean(0).argmax(-1)
    torch.testing.assert_close(
        full_gradient_decomposition(model, _images(), None).output,
        full_gradient_decomposition(model, _images(), predicted).output,
    )
