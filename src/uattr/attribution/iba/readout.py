"""The Readout Bottleneck (Schulz et al., ICLR 2020, section 3.2): alpha predicted in one pass.

A small network reads feature maps of a frozen classifier in a nested clean forward pass and
predicts the bottleneck's alpha in one go, instead of optimising it per image. :class:`Readout`
is that network together with the classifier it reads (plain ``nn.Module``; trained by
:class:`uattr.lit.readout.ReadoutBottleneckModule`, loaded from a checkpoint by
:func:`uattr.lit.readout.load_readout`); :class:`ReadoutBottleneck` gives its maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from uattr.attribution.base import Attribution, Target
from uattr.attribution.iba.bottleneck import Bottleneck, named_layers
from uattr.attribution.iba.capacity import capacity_map, gaussian_smoothing
from uattr.attribution.iba.estimator import FeatureEstimator
from uattr.bayes.outputs import forward_posterior, module_device
from uattr.modes import evaluating

__all__ = ["ALPHA_CLAMP", "Readout", "ReadoutBottleneck", "check_explains"]

#: alpha range of the readout (library and paper code clamp to [-5, 5])
ALPHA_CLAMP = 5.0


class Readout(nn.Module):
    """The readout network of a Readout Bottleneck, with the frozen model it reads.

    Nested pass: the model runs on the clean images (no gradients); each readout layer's output
    is normalised per element, ``(r - mean) / max(std, min_std)``, averaged over the posterior's
    copies of the image (MCDropout's S samples; the modules of a wildcard name), and brought to the
    bottleneck's (h, w): feature maps by bilinear interpolation (``align_corners=True``, as the
    library), vectors [F] broadcast to [F, h, w]. Concatenated (F_in channels), they go through
    ``1x1 conv F_in -> F_in // 2, ReLU, 1x1 conv -> 2 C, ReLU, 1x1 conv -> C`` (the IBA library's
    architecture; the paper code's "A" variant ends ``-> C // 4 -> C``); the last conv starts with
    bias 5 and weights scaled by 1e-3, so alpha starts near 5 (lambda = 0.993, almost no
    restriction). alpha is clamped to [-5, 5]; lambda = G_sigma * sigmoid(alpha), and the bottleneck
    at ``layer`` is that of :class:`~uattr.attribution.iba.PerSampleBottleneck`.

    Args:
        model: the classifier explained (posterior wrapper, evidential or plain); frozen by the
            training module, read here as it is.
        layer: the bottleneck layer (dotted name / wildcard), output [N, C, h, w].
        readout_layers: the layers read (dotted names / wildcards); outputs [N, F] or [N, F, u, v].
        input_shape: (channels, H, W) of the images, for one probe forward that sizes the network.
        sigma: Gaussian smoothing of lambda (1, the library's inherited default; the paper code's
            readout value is UNCONFIRMED).
        min_std: floor of the feature std (0.01, library).

    The statistics (buffers ``mean_i`` / ``std_i`` per stream, ``stream_names`` giving the order)
    must be filled by :meth:`estimate` or :meth:`set_statistics` before use; they are saved in
    the module's ``state_dict``.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        readout_layers: Sequence[str],
        input_shape: Sequence[int],
        sigma: float = 1.0,
        min_std: float = 0.01,
    ) -> None:
        super().__init__()
        if isinstance(readout_layers, str) or not readout_layers:
            raise ValueError(
                "readout_layers must be a non-empty list of layer names, e.g. "
                "['backbone.conv1', 'backbone.conv2', 'backbone.fc3']."
            )
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ValueError(f"input_shape must be (channels, H, W), got {input_shape}.")
        if not math.isfinite(sigma) or sigma < 0 or not math.isfinite(min_std) or min_std < 0:
            raise ValueError(f"sigma and min_std must be finite and >= 0, got {sigma}, {min_std}.")
        self.model = model
        self.layer = layer
        self.readout_layers = list(readout_layers)
        self.input_shape = input_shape
        self.sigma = float(sigma)
        self.min_std = float(min_std)
        self._bottleneck_layers = named_layers(model, layer)
        self._groups = [named_layers(model, spec) for spec in self.readout_layers]
        names: list[str] = []
        for name, _ in [*self._bottleneck_layers, *(nl for g in self._groups for nl in g)]:
            if name not in names:
                names.append(name)
        self.stream_names = names
        shapes, self.num_classes = self._probe()
        for i, name in enumerate(names):
            self.register_buffer(f"mean_{i}", torch.zeros(shapes[name]))
            self.register_buffer(f"std_{i}", torch.ones(shapes[name]))
        self.register_buffer("estimated", torch.tensor(False))
        bottleneck_shapes = {shapes[n] for n, _ in self._bottleneck_layers}
        if len(bottleneck_shapes) != 1 or len(next(iter(bottleneck_shapes))) != 3:
            raise ValueError(
                f"the bottleneck layer {layer!r} must output one feature shape [C, h, w]; got "
                f"{sorted(bottleneck_shapes)}. Pick a convolutional layer."
            )
        self.feature_shape = next(iter(bottleneck_shapes))
        in_channels = 0
        for spec, group in zip(self.readout_layers, self._groups, strict=True):
            group_shapes = {shapes[n] for n, _ in group}
            if len(group_shapes) != 1 or len(next(iter(group_shapes))) not in (1, 3):
                raise ValueError(
                    f"readout layer {spec!r} must output [N, F] or [N, F, u, v] (one shape for "
                    f"all its modules); got {sorted(group_shapes)}."
                )
            in_channels += next(iter(group_shapes))[0]
        out_channels = self.feature_shape[0]
        hidden = max(in_channels // 2, 1)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * out_channels, 1),
            nn.ReLU(),
            nn.Conv2d(2 * out_channels, out_channels, 1),
        )
        with torch.no_grad():
            self.net[-1].weight.mul_(1e-3)
            self.net[-1].bias.fill_(5.0)

    # ---- statistics ----------------------------------------------------------------------------
    def _probe(self) -> tuple[dict[str, tuple[int, ...]], int]:
        shapes: dict[str, tuple[int, ...]] = {}
        modules = dict([*self._bottleneck_layers, *(x for g in self._groups for x in g)])

        def make_hook(name: str):
            def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                if not isinstance(output, torch.Tensor):
                    raise TypeError(f"layer {name!r} must return a tensor to be read.")
                shapes[name] = tuple(output.shape[1:])

            return hook

        x = torch.zeros(1, *self.input_shape, device=module_device(self.model))
        handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
        try:
            with evaluating(self.model), torch.inference_mode(False), torch.no_grad():
                out = forward_posterior(self.model, x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [n for n in modules if n not in shapes]
        if missing:
            raise RuntimeError(f"layers {missing} were not called by the model's forward.")
        return shapes, int(out.shape[-1])

    def set_statistics(self, estimator: FeatureEstimator) -> None:
        """Copy the mean/std of every stream from ``estimator`` into the buffers."""
        for i, name in enumerate(self.stream_names):
            mean, std = getattr(self, f"mean_{i}"), getattr(self, f"std_{i}")
            new_mean, new_std = estimator.mean(name), estimator.std(name)
            if new_mean.shape != mean.shape:
                raise ValueError(
                    f"the estimator's {name!r} has shape {tuple(new_mean.shape)}, the readout "
                    f"expects {tuple(mean.shape)}."
                )
            mean.copy_(new_mean)
            std.copy_(new_std)
        self.estimated.fill_(True)

    def estimate(self, data: Any, n_samples: int = 1000) -> FeatureEstimator:
        """Estimate the statistics of every read and bottleneck layer from ``data`` (see
        :meth:`FeatureEstimator.estimate`) and store them."""
        modules = dict(self.model.named_modules())
        est = FeatureEstimator.estimate(
            self.model, [modules[n] for n in self.stream_names], data, n_samples
        )
        self.set_statistics(est)
        return est

    def _stats(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.stream_names.index(name)
        return getattr(self, f"mean_{i}"), getattr(self, f"std_{i}").clamp_min(self.min_std)

    def _check_estimated(self) -> None:
        if not bool(self.estimated):
            raise RuntimeError(
                "the readout's feature statistics were never estimated: call "
                "readout.estimate(datamodule) (training does this at the start of fit) or load a "
                "trained readout checkpoint."
            )

    def bottleneck(self) -> Bottleneck:
        stats = [self._stats(n) for n, _ in self._bottleneck_layers]
        return Bottleneck(self._bottleneck_layers, [m for m, _ in stats], [s for _, s in stats])

    # ---- the two passes ------------------------------------------------------------------------
    def nested_pass(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, Bottleneck, list[tuple[int, torch.Tensor]]]:
        """The clean pass: (readout input [B, F_in, h, w], the bottleneck, its records of R)."""
        self._check_estimated()
        b = x.shape[0]
        h, w = self.feature_shape[1:]
        read: dict[str, list[torch.Tensor]] = {}

        def make_hook(name: str):
            def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                if output.shape[0] % b:
                    raise RuntimeError(
                        f"readout layer {name!r} saw {output.shape[0]} rows for B = {b}."
                    )
                mean, std = self._stats(name)
                # the normalisation is affine per element: average the copies first (P x cheaper)
                r = output.detach().reshape(-1, b, *output.shape[1:]).mean(0)
                read.setdefault(name, []).append((r - mean) / std)

            return hook

        bottleneck = self.bottleneck()
        modules = {n: m for g in self._groups for n, m in g}
        handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
        try:
            with torch.no_grad(), bottleneck.inserted(b) as records:
                forward_posterior(self.model, x)
        finally:
            for handle in handles:
                handle.remove()
        maps = []
        for group in self._groups:
            r = torch.stack([torch.stack(read[n]).mean(0) for n, _ in group]).mean(0)
            if r.dim() == 2:
                r = r[:, :, None, None].expand(-1, -1, h, w)
            else:
                r = F.interpolate(r, size=(h, w), mode="bilinear", align_corners=True)
            maps.append(r)
        return torch.cat(maps, 1), bottleneck, records

    def lam(self, features: torch.Tensor) -> torch.Tensor:
        """lambda [B, C, h, w] from the readout input: smoothed sigmoid of the clamped alpha."""
        alpha = self.net(features).clamp(-ALPHA_CLAMP, ALPHA_CLAMP)
        return gaussian_smoothing(torch.sigmoid(alpha), self.sigma)

    def capacity(self, x: torch.Tensor) -> torch.Tensor:
        """Per-element capacity [B, C, h, w] (nats) of ``x`` [B, C, H, W]: one clean forward of the
        model (which also records R), then the readout network."""
        features, bottleneck, records = self.nested_pass(x)
        return bottleneck.capacity(records, self.lam(features))

    def restricted_forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training pass: (model output with the bottleneck inserted, capacity [B, C, h, w]).

        The output is :func:`~uattr.bayes.outputs.forward_posterior`'s (logits [S, B, K] or an
        evidential alpha [B, K]); gradients reach the readout network only through lambda. One
        noise draw per image: from ``generator`` (CPU, reproducible) or the global RNG.
        """
        features, bottleneck, records = self.nested_pass(x)
        lam = self.lam(features)
        shape = (x.shape[0], *self.feature_shape)
        if generator is None:
            noise = torch.randn(shape, device=x.device, dtype=x.dtype)
        else:
            noise = torch.randn(shape, generator=generator).to(device=x.device, dtype=x.dtype)
        with bottleneck.inserted(x.shape[0], lam, noise, copies=1):
            out = forward_posterior(self.model, x)
        return out, bottleneck.capacity(records, lam)


class ReadoutBottleneck(Attribution):
    """Maps of a trained Readout Bottleneck: capacity bits [B, H, W] in one forward pass.

    Same map as :class:`~uattr.attribution.iba.PerSampleBottleneck` (capacity summed over channels,
    bits, area-scaled, bilinear resize), with lambda predicted by the readout instead of optimised.

    The readout predicts alpha from the features alone, as in Schulz et al., so the map does not
    depend on the class target (which is still validated; ``None`` is accepted). It was trained to
    keep the label's information and cannot explain an uncertainty: uncertainty targets raise (use
    ``PerSampleBottleneck(model, layer)(x, "total")``).

    Args:
        model: the classifier explained (posterior wrapper, evidential or plain): the module the
            readout reads, or one with the same weights (see :func:`check_explains`).
        readout: a trained :class:`Readout`: a ``ReadoutBottleneckModule``'s ``.readout``, or
            :func:`uattr.lit.readout.load_readout` for a readout checkpoint.

    Raises:
        TypeError: ``readout`` is not a :class:`Readout`.
        ValueError: the readout reads another classifier than ``model``.
    """

    label: ClassVar[str] = "Readout IBA"
    explains: ClassVar[frozenset[str]] = frozenset({"class"})
    class_dependent: ClassVar[bool] = False
    required_kwargs: ClassVar[tuple[str, ...]] = ("readout",)

    def __init__(self, model: nn.Module, readout: Readout) -> None:
        super().__init__(model)
        if not isinstance(readout, Readout):
            hint = (
                " (this module holds one: pass its .readout)"
                if isinstance(getattr(readout, "readout", None), Readout)
                else ""
            )
            raise TypeError(
                f"readout must be a trained Readout, got {type(readout).__name__}{hint}. Load a "
                "readout checkpoint with uattr.lit.readout.load_readout(path, model)."
            )
        check_explains(readout, model)
        self.readout = readout

    def default_target(self, x: torch.Tensor) -> torch.Tensor:
        """Class 0 for every image: the map does not depend on the class, so no forward pass is
        spent predicting one."""
        return torch.zeros(x.shape[0], dtype=torch.long)

    def attribute(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        readout = self.readout
        if target.min() < 0 or target.max() >= readout.num_classes:
            raise ValueError(
                f"class target out of range: the model has {readout.num_classes} classes, got "
                f"classes {target.min().item()}..{target.max().item()}."
            )
        with evaluating(readout), torch.no_grad():
            return capacity_map(readout.capacity(x), tuple(x.shape[-2:]))


def check_explains(readout: Readout, classifier: nn.Module) -> None:
    """Raise unless ``readout`` reads ``classifier`` (the same module or equal weights).

    A readout checkpoint carries the weights of the classifier it was trained on; its maps explain
    that classifier, so they are only maps of ``classifier`` when the weights agree.

    Raises:
        ValueError: the state dicts differ (other keys or other values).
    """
    reads = readout.model
    if reads is classifier:
        return
    theirs, ours = reads.state_dict(), classifier.state_dict()
    if theirs.keys() != ours.keys() or any(
        not torch.equal(theirs[k], ours[k].to(theirs[k].device)) for k in ours
    ):
        raise ValueError(
            "the readout was trained on another classifier: the weights of the classifier it "
            "reads differ from those of the model explained. Retrain the readout on this "
            "classifier (train.py fit --config configs/mnist5k_readout.yaml "
            "--model.init_args.classifier=<its checkpoint>)."
        )
