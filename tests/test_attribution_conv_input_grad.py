"""The rerouted CPU input gradient of small-input convolutions equals autograd's."""

import pytest
import torch
from torch import nn

from uattr.attribution.conv_input_grad import reroutable, small_input_conv_gradients


def _input_gradient(net: nn.Module, x: torch.Tensor, reroute: bool) -> torch.Tensor:
    leaf = x.detach().requires_grad_(True)
    if reroute:
        with small_input_conv_gradients(net):
            out = net(leaf)
    else:
        out = net(leaf)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)  # a generic cotangent
    (grad,) = torch.autograd.grad((out * weights).sum(), leaf)
    return grad


@pytest.mark.parametrize(
    ("channels", "kernel", "padding", "dilation"),
    [(1, 5, 2, 1), (1, 5, 0, 1), (3, 3, 1, 1), (2, 3, 2, 2), (4, (3, 5), (0, 2), 1)],
)
def test_equals_autograd(channels, kernel, padding, dilation) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 6, kernel, padding=padding, dilation=dilation)
    net = nn.Sequential(conv, nn.ReLU(inplace=True), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(5, channels, 12, 12)
    net(x)  # materialise the lazy layer
    assert reroutable(conv)
    expected = _input_gradient(net, x, reroute=False)
    got = _input_gradient(net, x, reroute=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert expected.abs().sum() > 0
    assert not conv._forward_hooks  # removed on exit


def test_only_supported_layers_are_rerouted() -> None:
    assert not reroutable(nn.Conv2d(8, 4, 3))  # many input channels: oneDNN is faster
    assert not reroutable(nn.Conv2d(1, 4, 3, stride=2))
    assert not reroutable(nn.Conv2d(2, 4, 3, groups=2))
    assert not reroutable(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"))
    assert not reroutable(nn.Conv2d(1, 4, 3, padding="same"))
    assert not reroutable(nn.Conv2d(1, 4, 3, padding=3))  # more padding than the kernel spans
    assert not reroutable(nn.Conv1d(1, 4, 3))
    assert not reroutable(nn.Conv2d(3, 64, 3, padding=1))  # many outputs: no faster than oneDNN
    assert reroutable(nn.Conv2d(3, 32, 3, padding=1))


def test_forward_unchanged_and_untouched_without_input_gradients() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    x = torch.randn(2, 1, 8, 8)
    with small_input_conv_gradients(conv):
        with torch.no_grad():
            a = conv(x)
        b = conv(x)  # input does not require grad: the layer's own output and graph
        c = conv(x.requires_grad_(True))
    assert torch.equal(a, conv(x).detach()) and torch.equal(b, a) and torch.equal(c, a)
    assert b.grad_fn is not None and "Convolution" in type(b.grad_fn).__name__
    assert "Reroute" in type(c.grad_fn).__name__
