"""A faster input gradient for convolutions with few input channels, on the CPU.

Every gradient-based attribution differentiates the model w.r.t. its *input*, which training never
does. The first convolution of an image model has 1-3 input channels, and for that shape the
CPU's default backward-data kernel (oneDNN) is slow: for LeNet5's conv1 (1 -> 6 channels, 5x5,
28x28) the same numbers computed as a stride-1 convolution of the output gradient with the
flipped, transposed kernel by ATen's own (non-oneDNN) kernel are several times faster, and the
oneDNN kernel dominated UA-Backprop's time (``docs/choices_and_timings.md``). With more input
channels (LeNet5's conv2, 6 -> 16) oneDNN is the faster one, hence the input-channel limit; with
many output channels the two are even (CifarResNet18's stem, 3 -> 64), hence the output-channel
limit.

:func:`small_input_conv_gradients` routes the input gradient of such layers through that
computation for the duration of a block:

    grad_x = conv2d(grad_y, flip(W).transpose(0, 1), padding = d (k - 1) - p, dilation = d)

the exact adjoint of a stride-1, ungrouped, zero-padded convolution (equal to autograd's result
up to float rounding; tests check it). The layer's forward is unchanged; its weight and bias get
no gradient from the rerouted path, so use it only where no parameter gradient is wanted
(attribution maps).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MAX_OUTPUT_CHANNELS",
    "SMALL_INPUT_CHANNELS",
    "reroutable",
    "small_input_conv_gradients",
]

#: Convolutions with at most this many input channels get the rerouted input gradient...
SMALL_INPUT_CHANNELS = 4
#: ... and at most this many output channels.
MAX_OUTPUT_CHANNELS = 32


def reroutable(module: nn.Module) -> bool:
    """A ``Conv2d`` whose input gradient :func:`small_input_conv_gradients` computes itself:
    at most :data:`SMALL_INPUT_CHANNELS` input and :data:`MAX_OUTPUT_CHANNELS` output channels,
    stride 1, one group, zero padding given as numbers no larger than ``dilation * (kernel - 1)``.
    """
    if type(module) is not nn.Conv2d or module.in_channels > SMALL_INPUT_CHANNELS:
        return False
    if module.out_channels > MAX_OUTPUT_CHANNELS:
        return False
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        return False
    if tuple(module.stride) != (1, 1):
        return False
    return all(
        0 <= p <= d * (k - 1)
        for p, d, k in zip(module.padding, module.dilation, module.kernel_size, strict=True)
    )


class _RerouteInputGradient(torch.autograd.Function):
    """Returns the layer's (already computed) output; its backward gives the conv's input
    gradient.

    The output comes in a non-tensor box, so autograd treats it as a new tensor rather than a view
    of an input (a view would forbid later in-place ops, e.g. ``ReLU(inplace=True)``); it shares
    storage with the conv's own output, which nothing else reads.
    """

    @staticmethod
    def forward(ctx, x, weight, padding, dilation, box):  # noqa: ANN001, ANN205
        ctx.save_for_backward(weight)
        ctx.padding, ctx.dilation = padding, dilation
        return box[0]

    @staticmethod
    def backward(ctx, grad_output):  # noqa: ANN001, ANN205
        (weight,) = ctx.saved_tensors
        kernel = weight.flip(-2, -1).transpose(0, 1)
        sizes = zip(ctx.padding, ctx.dilation, weight.shape[-2:], strict=True)
        pad = [d * (k - 1) - p for p, d, k in sizes]
        with _without_onednn():
            grad_x = F.conv2d(grad_output, kernel, padding=pad, dilation=ctx.dilation)
        return grad_x, None, None, None, None


@contextmanager
def _without_onednn() -> Iterator[None]:
    """ATen's own CPU convolution for the block (``torch.backends.mkldnn.enabled``; unlike
    ``mkldnn.flags`` it leaves the other oneDNN flags alone).

    The flag is process-wide: another Python thread convolving during this one call would also
    skip oneDNN (same results, other speed). CPU backward passes run on the calling thread.
    """
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


@contextmanager
def small_input_conv_gradients(model: nn.Module) -> Iterator[None]:
    """For the block, CPU forwards of ``model``'s :func:`reroutable` convolutions whose input
    requires grad get the faster input gradient (module docstring); other layers, devices and
    calls are untouched. The hooks run before any other forward hook of the layer (so hooks that
    record the output's gradient edge see the rerouted output) and are removed on exit."""

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor) or not x.requires_grad or x.device.type != "cpu":
            return None
        if not torch.is_grad_enabled():
            return None
        return _RerouteInputGradient.apply(
            x, module.weight.detach(), tuple(module.padding), module.dilation, (output.detach(),)
        )

    handles = [
        m.register_forward_hook(hook, prepend=True) for m in model.modules() if reroutable(m)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
