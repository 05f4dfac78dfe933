"""Information Bottleneck Attribution: the Per-Sample Bottleneck and the math it shares with the
Readout Bottleneck (Schulz, Sixt, Tombari & Landgraf, "Restricting the Flow: Information
Bottlenecks for Attribution", ICLR 2020; spec in ``research/iba-olives-edl.md`` section A).

At a layer with features R [C, h, w], the bottleneck replaces R by

    Z = lambda * R + (1 - lambda) * eps,    eps ~ N(mu_R, sigma_R^2)   (per element),

with lambda = G_sigma * sigmoid(alpha) (a fixed depthwise Gaussian smoothing of the mask) and
mu_R, sigma_R estimated per element over a data set (:class:`FeatureEstimator`). With
r' = (R - mu_R) / sigma_R the information that Z keeps about R is, per element (nats),

    C = KL( N(lambda r', (1 - lambda)^2) || N(0, 1) )
      = -1/2 * (1 + ln (1 - lambda)^2 - (lambda r')^2 - (1 - lambda)^2)          (:func:`capacity`)

The heat map is C summed over channels, in bits, scaled by (h w) / (H W) so the total number of
bits is kept, and resized bilinearly to the image (:func:`capacity_map`).

Posterior samples. The bottleneck is one forward hook that replaces a layer's output and makes
the noisy copies of every image (:class:`Bottleneck`). MCDropout runs a layer before its first
dropout once on the B images (its shared prefix) and a later layer on S*B sample-major rows; a
DeepEnsemble runs each member once (hook every member with ``"members.*.conv2"``). Every call
gets the same lambda for the same image, and the capacity is averaged over the posterior copies
the layer saw and over the calls (for a layer before the first dropout that is the capacity of
the one feature map).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uattr.attribution.base import Attribution, Target
from uattr.attribution.cam import LayerSpec, resolve_layers
from uattr.bayes.evidential import dirichlet_uncertainty
from uattr.bayes.posterior import check_uncertainty_kind, is_evidential, sample_logits
from uattr.bayes.uncertainty import decompose_logits
from uattr.modes import evaluating
from uattr.common import check_images

__all__ = [
    "Bottleneck",
    "FeatureEstimator",
    "PerSampleBottleneck",
    "capacity",
    "capacity_map",
    "forward_posterior",
    "gaussian_smoothing",
    "log_predictive",
    "named_layers",
    "predicted_class",
    "posterior_uncertainty",
]

_FORMAT = "uattr.FeatureEstimator/1"


# ---- the bottleneck math -------------------------------------------------------------------------
def capacity(r_norm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Per-element capacity C = KL(N(lam r', (1-lam)^2) || N(0, 1)) in nats (Schulz et al. 2020).

    Args:
        r_norm: normalised features r' = (R - mu_R) / sigma_R.
        lam: the mask lambda in [0, 1], broadcastable to ``r_norm``.

    Returns:
        The capacity, broadcast shape, >= 0. At lam = sigmoid(5), r' = 0: 4.5067 nats = 6.5019
        bits. ``1 - lam`` is floored at the dtype's smallest normal number so lam = 1 gives a large
        finite value (about 87 nats in float32) instead of inf.
    """
    one_minus = (1 - lam).clamp_min(torch.finfo(lam.dtype).tiny)
    var = one_minus * one_minus
    kl = -0.5 * (1 + 2 * torch.log(one_minus) - (lam * r_norm) ** 2 - var)
    return kl.clamp_min(0.0)  # >= 0 analytically; the clamp only removes rounding below 0


def gaussian_smoothing(lam: torch.Tensor, sigma: float) -> torch.Tensor:
    """Depthwise 2-D Gaussian smoothing of a mask [B, C, h, w] (the IBA library's kernel).

    Kernel size ``2 * round(2 * sigma) + 1`` (5 for sigma = 1), normalised to sum 1, reflection
    padding (replicate padding when the map is too small to reflect, e.g. 2 x 2). ``sigma = 0``
    returns ``lam`` unchanged. Each image and channel is smoothed on its own.
    """
    if sigma <= 0:
        return lam
    size = 2 * round(2 * sigma) + 1
    if size == 1:
        return lam
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = torch.outer(g, g)
    kernel = (kernel / kernel.sum()).to(device=lam.device, dtype=lam.dtype)
    channels = lam.shape[1]
    pad = size // 2
    mode = "reflect" if pad < lam.shape[-2] and pad < lam.shape[-1] else "replicate"
    padded = F.pad(lam, (pad, pad, pad, pad), mode=mode)
    return F.conv2d(padded, kernel.expand(channels, 1, size, size), groups=channels)


def capacity_map(cap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Heat map in bits from per-element capacities (the IBA library's ``_to_saliency_map``).

    Args:
        cap: capacity [B, C, h, w] in nats.
        size: the image size (H, W).

    Returns:
        [B, H, W]: capacity summed over channels, divided by ln 2, multiplied by (h w) / (H W) so
        the map sums (before interpolation) to the total bits, then resized bilinearly
        (``align_corners=False``, the half-pixel convention of skimage/cv2). >= 0.
    """
    h, w = cap.shape[-2:]
    bits = cap.sum(1, keepdim=True) / math.log(2) * (h * w) / (size[0] * size[1])
    return F.interpolate(bits, size=size, mode="bilinear", align_corners=False)[:, 0]


# ---- what the bottleneck explains ----------------------------------------------------------------
def forward_posterior(model: nn.Module, x: torch.Tensor, copies: int = 1) -> torch.Tensor:
    """One forward of any model kind: logits [S, N, K] (a sampling posterior, or a plain model as
    S = 1) or, for an evidential model, the Dirichlet alpha [N, K]; N = ``copies * B`` when a
    bottleneck inside the model makes ``copies`` copies of each image (else N = B)."""
    if is_evidential(model):
        alpha = model.alpha(x)
        if alpha.dim() != 2 or alpha.shape[0] != copies * x.shape[0]:
            raise RuntimeError(
                f"{type(model).__name__}.alpha must return [N, K] with N = "
                f"{copies * x.shape[0]}, got shape {tuple(alpha.shape)}."
            )
        return alpha
    return sample_logits(model, x, copies)


def log_predictive(model: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """log of the posterior predictive [B, K] from :func:`forward_posterior`'s output.

    ``log mean_s softmax(z^s)`` (computed with logsumexp, finite even where a softmax underflows)
    for logit samples; ``log(alpha / sum alpha)`` for an evidential model.
    """
    if is_evidential(model):
        return torch.log(out) - torch.log(out.sum(-1, keepdim=True))
    return torch.logsumexp(torch.log_softmax(out, -1), 0) - math.log(out.shape[0])


def posterior_uncertainty(model: nn.Module, out: torch.Tensor, kind: str) -> torch.Tensor:
    """Uncertainty ``kind`` [B] (nats; vacuity for evidential models) from
    :func:`forward_posterior`'s output."""
    if is_evidential(model):
        return getattr(dirichlet_uncertainty(out), kind)
    return getattr(decompose_logits(out), kind)


def predicted_class(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """argmax of the posterior predictive [B] (the default class target), evaluated in eval mode."""
    with evaluating(model), torch.no_grad():
        return log_predictive(model, forward_posterior(model, x)).argmax(-1)


# ---- layers and statistics -----------------------------------------------------------------------
def named_layers(model: nn.Module, layer: LayerSpec) -> list[tuple[str, nn.Module]]:
    """``(dotted name, module)`` of every layer ``layer`` names (see
    :func:`uattr.attribution.cam.resolve_layers`: dotted names, ``*`` wildcards, modules)."""
    modules = resolve_layers(model, layer)
    names = {id(m): n for n, m in model.named_modules()}
    return [(names[id(m)], m) for m in modules]


class _Interrupt(Exception):
    """Stops an estimation forward once every hooked layer has been seen."""


class FeatureEstimator:
    """Per-element mean and standard deviation of layer features (IBA's mu_R, sigma_R).

    Welford's running update, merged batch by batch (Chan et al.), in float64; the std is the
    unbiased ``sqrt(M2 / (n - 1))`` of the IBA library's ``TorchWelfordEstimator``. Statistics are
    kept per *stream*, one per layer, keyed by the layer's dotted name in the model that was
    estimated (``"backbone.conv2"`` for an MCDropout around a LeNet5). Every row the layer sees
    counts as a sample: one per image for a layer before MCDropout's first dropout (run once for
    all S samples), S per image after it.

    Use :meth:`estimate` to fill one from data, :meth:`save` / :meth:`load` to reuse it (plain
    tensors and ints: loads with ``torch.load(weights_only=True)``).
    """

    def __init__(self) -> None:
        self._streams: dict[str, dict[str, Any]] = {}

    @property
    def names(self) -> list[str]:
        """The streams (layer names) held, in the order they were first updated."""
        return list(self._streams)

    def update(self, name: str, features: torch.Tensor) -> None:
        """Add ``features`` [N, *shape] (N samples of stream ``name``) to the running statistics."""
        if features.dim() < 2 or features.shape[0] == 0:
            raise ValueError(
                f"features of {name!r} must be [N, *shape] with N >= 1, got "
                f"{tuple(features.shape)}."
            )
        f = features.detach()
        if f.device.type == "mps":  # no float64 there
            f = f.cpu()
        f = f.to(torch.float64)  # batch moments on the features' device, running sums on the CPU
        n_b = f.shape[0]
        mean_b = f.mean(0)
        m2_b = ((f - mean_b) ** 2).sum(0).cpu()
        mean_b = mean_b.cpu()
        stream = self._streams.get(name)
        if stream is None:
            self._streams[name] = {"n": n_b, "mean": mean_b, "m2": m2_b}
            return
        if stream["mean"].shape != mean_b.shape:
            raise ValueError(
                f"features of {name!r} have shape {tuple(f.shape[1:])} per sample, but earlier "
                f"updates had {tuple(stream['mean'].shape)}."
            )
        n = stream["n"]
        total = n + n_b
        delta = mean_b - stream["mean"]
        stream["mean"] = stream["mean"] + delta * (n_b / total)
        stream["m2"] = stream["m2"] + m2_b + delta**2 * (n * n_b / total)
        stream["n"] = total

    def _stream(self, name: str) -> dict[str, Any]:
        if name not in self._streams:
            raise KeyError(
                f"the estimator has no statistics for layer {name!r}; it holds "
                f"{self.names or 'none'}. Estimate it for the same model and layer names."
            )
        return self._streams[name]

    def count(self, name: str) -> int:
        """Samples seen for stream ``name``."""
        return int(self._stream(name)["n"])

    def mean(self, name: str) -> torch.Tensor:
        """Per-element mean [*shape] (float32, CPU)."""
        return self._stream(name)["mean"].float()

    def std(self, name: str) -> torch.Tensor:
        """Per-element unbiased standard deviation [*shape] (float32, CPU; not floored)."""
        stream = self._stream(name)
        if stream["n"] < 2:
            raise ValueError(f"layer {name!r} has {stream['n']} sample(s); a std needs at least 2.")
        return (stream["m2"] / (stream["n"] - 1)).sqrt().float()

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, ints and strings (safe for ``torch.load(weights_only=True)``)."""
        return {
            "format": _FORMAT,
            "streams": {
                name: {"n": int(s["n"]), "mean": s["mean"].clone(), "m2": s["m2"].clone()}
                for name, s in self._streams.items()
            },
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FeatureEstimator:
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(
                f"not a uattr feature estimator (expected format {_FORMAT!r}); write one with "
                "FeatureEstimator.save."
            )
        est = cls()
        for name, s in state["streams"].items():
            est._streams[name] = {
                "n": int(s["n"]),
                "mean": s["mean"].to(torch.float64),
                "m2": s["m2"].to(torch.float64),
            }
        return est

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics with ``torch.save``."""
        torch.save(self.state_dict(), Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureEstimator:
        """Read statistics written by :meth:`save` (``torch.load(weights_only=True)``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no feature estimator at {path}.")
        return cls.from_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    @classmethod
    def estimate(
        cls,
        model: nn.Module,
        layer: LayerSpec,
        data: Any,
        n_samples: int = 1000,
        batch_size: int = 128,
    ) -> FeatureEstimator:
        """Estimate the features of ``layer`` over the first ``n_samples`` images of ``data``.

        The model runs in eval mode (flags restored), without gradients, and only up to the last
        hooked layer (the rest of the forward is skipped, as the IBA library does).

        Args:
            model: the model later explained (posterior wrapper, evidential or plain).
            layer: dotted name(s), wildcard or module(s); see :func:`named_layers`.
            data: a data module (its *train* split, read in order without shuffling, so the
                estimate is deterministic and no loader RNG is consumed), a DataLoader or any
                iterable of batches (image tensors or ``(images, labels, ...)``), or a tensor of
                images [N, C, H, W].
            n_samples: images used. Default 1000, ours: the IBA library defaults to and recommends
                10,000 for ImageNet and warns below 1,000 (mnist5k has 4,000 training digits); the
                number used for the paper is UNCONFIRMED.
            batch_size: images per forward when ``data`` is a tensor or a data module.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
            raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}.")
        layers = named_layers(model, layer)
        est = cls()
        pending: set[str] = set()

        def make_hook(name: str):
            def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                if not isinstance(output, torch.Tensor):
                    raise TypeError(f"layer {name!r} must return a tensor to be estimated.")
                est.update(name, output)
                pending.discard(name)
                if not pending:
                    raise _Interrupt

            return hook

        device = _module_device(model)
        seen = 0
        handles = [m.register_forward_hook(make_hook(n)) for n, m in layers]
        try:
            with evaluating(model), torch.inference_mode(False), torch.no_grad():
                for images in _image_batches(data, batch_size):
                    images = images[: n_samples - seen].to(device)
                    pending.update(n for n, _ in layers)
                    try:
                        forward_posterior(model, images)
                    except _Interrupt:
                        pass
                    if pending:
                        raise RuntimeError(
                            f"layers {sorted(pending)} were not called by the model's forward; "
                            "are they part of it?"
                        )
                    seen += images.shape[0]
                    if seen >= n_samples:
                        break
        finally:
            for handle in handles:
                handle.remove()
        if seen < 2:
            raise ValueError(f"the data gave {seen} image(s); estimating needs at least 2.")
        if seen < n_samples:
            warnings.warn(
                f"FeatureEstimator used {seen} images, fewer than the {n_samples} asked for.",
                stacklevel=2,
            )
        return est


def _module_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _image_batches(data: Any, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        if data.dim() != 4:
            raise ValueError(f"image data must be [N, C, H, W], got {tuple(data.shape)}.")
        yield from data.split(batch_size)
        return
    if hasattr(data, "train_dataloader") and hasattr(data, "setup"):  # a data module
        if getattr(data, "train_dataset", None) is None:
            data.setup("fit")
        dataset = getattr(data, "train_dataset", None)
        if dataset is None:
            raise ValueError(
                f"{type(data).__name__} has no train_dataset after setup('fit'); pass a "
                "DataLoader or an image tensor instead."
            )
        data = torch.utils.data.DataLoader(
            dataset, batch_size=getattr(data, "batch_size", batch_size), shuffle=False
        )
    if not isinstance(data, Iterable):
        raise TypeError(
            "data must be a data module, a DataLoader / iterable of batches or an image tensor "
            f"[N, C, H, W], got {type(data).__name__}."
        )
    for batch in data:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError("batches must hold images [B, C, H, W] first.")
        yield images


# ---- inserting the bottleneck --------------------------------------------------------------------
class Bottleneck:
    """Replace the outputs R of some layers by Z = lambda R + (1 - lambda) eps for one forward.

    Args:
        layers: ``(name, module)`` pairs (:func:`named_layers`); each must output [N, C, h, w].
        mean, std: per layer, mu_R and sigma_R [C, h, w] (std already floored at ``min_std``).

    Row layout. The model is called once on the B images. A hooked layer sees ``P * B`` rows, P >= 1
    being the posterior's sample-major repetition (1 before MCDropout's first dropout, whose shared
    prefix runs once for all samples; S after it; 1 for ensemble members and plain models), and
    returns ``P * copies * B`` rows, [P, copies, B] flattened: the noisy copies are made at the
    bottleneck, so the layers before it run once per image instead of once per copy, and every
    later layer sees the copies (copy-major within a posterior sample: row ``k * B + b``). The
    model's output has ``copies * B`` rows per posterior sample. Image b gets ``lam[b]`` in every
    copy and every posterior sample; the noise is shared by the P posterior samples (one draw of Z
    goes through every sample, so the loss sees the posterior predictive of that Z).
    """

    def __init__(
        self,
        layers: Sequence[tuple[str, nn.Module]],
        mean: Sequence[torch.Tensor],
        std: Sequence[torch.Tensor],
    ) -> None:
        if not (len(layers) == len(mean) == len(std)) or not layers:
            raise ValueError("Bottleneck needs one (mean, std) pair per layer, and >= 1 layer.")
        self.layers = list(layers)
        self.mean = list(mean)
        self.std = list(std)

    @contextmanager
    def inserted(
        self,
        batch_size: int,
        lam: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        copies: int = 1,
    ) -> Iterator[list[tuple[int, torch.Tensor]]]:
        """Hooks active for the block; yields the records ``(layer index, R)``.

        Args:
            batch_size: B, the number of distinct images.
            lam: the mask [B, C, h, w]; ``None`` only records R and leaves the outputs unchanged.
            noise: standard-normal draws broadcastable to [copies, B, C, h, w]; eps = mu + std *
                noise. Required with ``lam``.
            copies: how many noisy copies of each image the hooked layers return.

        Each record's R is the layer's output, detached, [P, B, C, h, w], or [1, B, C, h, w] when
        the P posterior copies are identical (a layer before the first dropout of an MCDropout
        with ``share_prefix=False``).
        """
        if lam is not None and noise is None:
            raise ValueError("Bottleneck.inserted needs noise whenever lam is given.")
        records: list[tuple[int, torch.Tensor]] = []
        handles = []

        def make_hook(index: int, name: str):
            def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor):
                if not isinstance(output, torch.Tensor) or output.dim() != 4:
                    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else output
                    raise ValueError(
                        f"the bottleneck layer {name!r} must output feature maps [N, C, h, w]; "
                        f"it returned {shape}. Pick a convolutional layer."
                    )
                rows = output.shape[0]
                if rows % batch_size:
                    raise RuntimeError(
                        f"the bottleneck layer {name!r} saw {rows} rows, not a multiple of "
                        f"B = {batch_size}; the layer must see every image in batch-first, "
                        "sample-major order."
                    )
                mean = self.mean[index].to(device=output.device, dtype=output.dtype)
                std = self.std[index].to(device=output.device, dtype=output.dtype)
                if tuple(output.shape[1:]) != tuple(mean.shape):
                    raise ValueError(
                        f"layer {name!r} outputs features {tuple(output.shape[1:])} but its "
                        f"statistics have shape {tuple(mean.shape)}; re-estimate them for this "
                        "model and input size."
                    )
                p = rows // batch_size
                r = output.detach().reshape(p, batch_size, *output.shape[1:])
                # Identical posterior copies: keep one, so the capacity and Z are computed once
                # (the noise is shared by the P copies anyway).
                if p > 1 and torch.equal(r, r[:1].expand_as(r)):
                    r = r[:1]
                records.append((index, r))
                if lam is None:
                    return None
                eps = mean + std * noise
                z = lam * r[:, None] + (1 - lam) * eps  # [P or 1, copies, B, C, h, w]
                z = z.expand(p, *z.shape[1:])
                return z.reshape(p * copies * batch_size, *output.shape[1:])

            return hook

        try:
            for index, (name, module) in enumerate(self.layers):
                handles.append(module.register_forward_hook(make_hook(index, name)))
            yield records
        finally:
            for handle in handles:
                handle.remove()
        if not records:
            raise RuntimeError(
                f"the bottleneck layer(s) {[n for n, _ in self.layers]} were not called during "
                "the forward; are they part of the model's forward pass?"
            )

    def capacity(
        self, records: Sequence[tuple[int, torch.Tensor]], lam: torch.Tensor
    ) -> torch.Tensor:
        """Capacity [B, C, h, w] in nats of ``lam`` [B, C, h, w] for the recorded R, averaged over
        the posterior copies P and over the hooked calls."""
        total = None
        for index, r in records:
            mean = self.mean[index].to(device=r.device, dtype=r.dtype)
            std = self.std[index].to(device=r.device, dtype=r.dtype)
            cap = capacity((r - mean) / std, lam).mean(0)
            total = cap if total is None else total + cap
        return total / len(records)


# ---- the Per-Sample Bottleneck -------------------------------------------------------------------
class PerSampleBottleneck(Attribution):
    """Per-Sample IBA (Schulz et al. 2020): optimise a mask alpha per image, return capacity bits.

    For each image its own alpha [C, h, w] (initialised to ``alpha_init``) is optimised with Adam
    (``lr``, ``steps``) on ``model loss + beta * mean capacity`` while ``noise_samples`` noisy
    copies of the image run through the bottleneck at ``layer``; the map is the capacity of the last
    forward pass (alpha after ``steps - 1`` updates: the IBA library's last update is never
    evaluated, so it is skipped) via :func:`capacity_map`, [B, H, W] in bits, >= 0.

    Batched: all B images go through one forward per step; the layers before the bottleneck see
    the B images once, the bottleneck makes the noise copies (B * noise_samples rows, times S after
    MCDropout's first dropout, for every later layer). The loss is a *sum* over images of
    per-image terms (each a mean over its own noise copies and its own C*h*w capacities), and Adam
    normalises each alpha element by its own gradient history, so every image follows exactly the
    trajectory it would follow alone. The standard-normal noise [steps, noise_samples, C, h, w]
    is drawn from a CPU generator seeded with ``seed`` and shared by every image, so a map depends
    only on its image and the seed, never on the batch's other images or the image's position.

    Targets (per image, then summed):

    - class indices [B] (``None``: the argmax of the posterior predictive): the mean over noise
      copies of ``-log p(class | Z)``, p the posterior predictive (``mean_s softmax(z^s)``;
      ``alpha / sum alpha`` for an evidential model). For a plain classifier this is the paper's
      cross-entropy.
    - an uncertainty kind (``"total"``, ``"aleatoric"``, ``"epistemic"``; ``"vacuity"`` for an
      evidential model). **Our extension**, not in the paper: the bottleneck must keep the
      information that produces the model's uncertainty, so the model loss is the mean over noise
      copies of ``(U(Z) - U(R))^2 / (2 tau^2)``, U(R) the clean uncertainty (nats) and tau =
      ``uncertainty_tolerance``. This is the negative Gaussian log-likelihood of the clean
      uncertainty under the bottlenecked model, the analogue of the paper's cross-entropy (the
      categorical log-likelihood of the label) as a variational bound on I(Z; U). The map shows
      where information must flow for the model to stay exactly as (un)certain as it is: ambiguous
      strokes for an uncertain digit, the class evidence for a confident one. Neither maximising U
      (any destroyed information raises it) nor minimising it (explains certainty, not uncertainty)
      keeps U.

    Args:
        model: a posterior wrapper (``MCDropout``, ``DeepEnsemble``), an ``Evidential`` model or a
            plain classifier.
        layer: where to insert the bottleneck: a dotted name (``"backbone.conv2"`` for an MCDropout
            LeNet5), ``"members.*.conv2"`` for every member of an ensemble, or a module. Its output
            must be [N, C, h, w].
        beta: weight of the mean capacity (10: library and paper code; equals the paper's 10/k on
            the summed capacity). Tuned on ImageNet: with 10 classes the CE can fall by at most
            ln 10, and beta = 10 discards almost all class information (on mnist5k the
            bottlenecked accuracy is 0.30); beta = 1 keeps it (1.00). See ``docs/iba.md``.
        steps: forward passes with the bottleneck (10, library/paper).
        lr: Adam learning rate on alpha (1, library/paper).
        noise_samples: noisy copies per image (10, library/paper).
        alpha_init: initial alpha (5: lambda = 0.9933, about 6.5 bits per element).
        sigma: std (feature-map pixels) of the Gaussian smoothing of lambda (1, library; 0 = none).
        estimator: the feature statistics: a :class:`FeatureEstimator`, a path written by
            :meth:`FeatureEstimator.save`, or ``None`` (then call :meth:`estimate` first).
        min_std: floor of sigma_R (0.01, library; the paper code has none).
        uncertainty_tolerance: tau in nats for uncertainty targets (1.0, ours, UNCONFIRMED: as
            strict as the class cross-entropy; a confident digit going from p = 0.99 to 0.85 costs
            0.15 in CE and, through its ~0.5 nat entropy rise, 0.125 here). Epistemic
            uncertainties are often ~100x smaller than total ones: use ~0.1 for them.
        seed: seeds the noise.

    Not replicated from the library: its "active neuron" mask and the ReLU clamp of Z (the paper
    code's Gaussian estimator has neither).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec,
        beta: float = 10.0,
        steps: int = 10,
        lr: float = 1.0,
        noise_samples: int = 10,
        alpha_init: float = 5.0,
        sigma: float = 1.0,
        estimator: FeatureEstimator | str | os.PathLike | None = None,
        min_std: float = 0.01,
        uncertainty_tolerance: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(model)
        self.layers = named_layers(model, layer)
        for value, name in ((beta, "beta"), (lr, "lr"), (sigma, "sigma"), (min_std, "min_std")):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}.")
        if not math.isfinite(alpha_init):
            raise ValueError(f"alpha_init must be finite, got {alpha_init}.")
        if not math.isfinite(uncertainty_tolerance) or uncertainty_tolerance <= 0:
            raise ValueError(
                f"uncertainty_tolerance must be a finite number > 0 (nats), got "
                f"{uncertainty_tolerance}."
            )
        for value, name in ((steps, "steps"), (noise_samples, "noise_samples")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}.")
        self.beta = float(beta)
        self.steps = steps
        self.lr = float(lr)
        self.noise_samples = noise_samples
        self.alpha_init = float(alpha_init)
        self.sigma = float(sigma)
        self.min_std = float(min_std)
        self.uncertainty_tolerance = float(uncertainty_tolerance)
        self.seed = seed
        if isinstance(estimator, str | os.PathLike):
            estimator = FeatureEstimator.load(estimator)
        if estimator is not None and not isinstance(estimator, FeatureEstimator):
            raise TypeError(
                "estimator must be a FeatureEstimator, a path to a saved one, or None; got "
                f"{type(estimator).__name__}."
            )
        self.estimator = estimator
        if estimator is not None:
            self._statistics()  # fail now if the estimator does not cover the layers

    def estimate(self, data: Any, n_samples: int = 1000) -> FeatureEstimator:
        """Estimate (and keep) the feature statistics of the layer(s) from ``data``; see
        :meth:`FeatureEstimator.estimate`. Re-estimate after the model's weights change."""
        self.estimator = FeatureEstimator.estimate(
            self.model, [m for _, m in self.layers], data, n_samples
        )
        return self.estimator

    def _statistics(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self.estimator is None:
            raise RuntimeError(
                f"{self.name} has no feature statistics: pass "
                "estimator=FeatureEstimator.load(path) or call .estimate(datamodule) before "
                "attributing."
            )
        means = [self.estimator.mean(n) for n, _ in self.layers]
        stds = [self.estimator.std(n).clamp_min(self.min_std) for n, _ in self.layers]
        if len({tuple(m.shape) for m in means}) != 1 or means[0].dim() != 3:
            raise ValueError(
                f"the bottleneck layers must share one feature shape [C, h, w]; the estimator has "
                f"{[tuple(m.shape) for m in means]}."
            )
        return means, stds

    def noise_patterns(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The standard-normal draws [steps, noise_samples, *shape] (float32, CPU) that every
        image sees."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        return torch.randn((self.steps, self.noise_samples, *shape), generator=gen)

    def __call__(self, x: torch.Tensor, target: Target | None = None) -> torch.Tensor:
        """Maps [B, H, W] (bits) for ``x`` [B, C, H, W]; ``target=None`` explains the predicted
        class of the posterior predictive."""
        if target is None:
            check_images(x, name=f"{self.name} inputs")
            with torch.inference_mode(False):
                target = predicted_class(self.model, x.detach().clone())
        return super().__call__(x, target)

    def model_loss(
        self, out: torch.Tensor, target: Target, reference: torch.Tensor | None
    ) -> torch.Tensor:
        """The per-row model loss [copies * B] from :func:`forward_posterior`'s output."""
        if isinstance(target, str):
            u = posterior_uncertainty(self.model, out, target)
            return 0.5 * ((u - reference) / self.uncertainty_tolerance) ** 2
        log_p = log_predictive(self.model, out)
        if target.min() < 0 or target.max() >= log_p.shape[-1]:
            raise ValueError(
                f"class target out of range: the model has {log_p.shape[-1]} classes, got "
                f"classes {target.min().item()}..{target.max().item()}."
            )
        return -log_p.gather(1, target[:, None]).squeeze(1)

    def attribute(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        return capacity_map(self.bottleneck_capacity(x, target), tuple(x.shape[-2:]))

    def bottleneck_capacity(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        """The optimised per-element capacity [B, C, h, w] in nats (what the map is made of)."""
        b, n = x.shape[0], self.noise_samples
        means, stds = self._statistics()
        bottleneck = Bottleneck(self.layers, means, stds)
        shape = tuple(means[0].shape)
        if isinstance(target, str):
            check_uncertainty_kind(self.model, target)
            with torch.no_grad():
                reference = posterior_uncertainty(
                    self.model, forward_posterior(self.model, x), target
                )
            targets: Target = target
        else:
            reference = None
            targets = target.to(x.device).repeat(n)
        noise = self.noise_patterns(shape).to(device=x.device, dtype=x.dtype)
        alpha = torch.full((b, *shape), self.alpha_init, device=x.device, dtype=x.dtype)
        alpha.requires_grad_(True)
        optimizer = torch.optim.Adam([alpha], lr=self.lr)
        ref = None if reference is None else reference.repeat(n)
        records: list[tuple[int, torch.Tensor]] | None = None
        for step in range(self.steps - 1):
            lam = gaussian_smoothing(torch.sigmoid(alpha), self.sigma)
            # The bottleneck makes the n noisy copies: output rows k * B + b (copy-major).
            with bottleneck.inserted(b, lam, noise[step][:, None], copies=n) as rec:
                out = forward_posterior(self.model, x, copies=n)
            records = rec
            model_loss = self.model_loss(out, targets, ref).view(n, b).mean(0)
            information = bottleneck.capacity(records, lam).flatten(1).mean(1)
            loss = (model_loss + self.beta * information).sum()
            (alpha.grad,) = torch.autograd.grad(loss, alpha)
            optimizer.step()
        with torch.no_grad():
            if records is None:  # steps == 1: only the capacity at alpha_init is needed
                with bottleneck.inserted(b) as records:
                    forward_posterior(self.model, x)
            lam = gaussian_smoothing(torch.sigmoid(alpha), self.sigma)
            return bottleneck.capacity(records, lam)
