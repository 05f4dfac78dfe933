"""IBA's feature statistics mu_R, sigma_R: estimated per element over data, saved, reloaded."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uattr.attribution.cam import LayerSpec
from uattr.attribution.iba.bottleneck import named_layers
from uattr.bayes.outputs import forward_posterior, module_device
from uattr.modes import evaluating

__all__ = ["FeatureEstimator"]

_FORMAT = "uattr.FeatureEstimator/1"


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

        device = module_device(model)
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
