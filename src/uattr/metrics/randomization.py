"""Model-parameter randomisation sanity check (Adebayo et al. NeurIPS 2018), scored by SSIM.

A map that explains the model should change when the model's weights are destroyed. The layers of a
deep copy of the model are re-initialised one after another, from the logits towards the input
("cascading"), and each resulting map is compared with the original by SSIM: low SSIM after
randomisation passes the check; SSIM near 1 means the map does not depend on the learned weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.utilities.data import dim_zero_cat

from uattr.metrics._common import check_maps, minmax_rows

__all__ = ["RandomizationSanity", "map_ssim", "randomizable_layers"]

Explain = Callable[..., torch.Tensor]


def randomizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that own parameters and have ``reset_parameters``, output side first.

    "Output side first" is the reverse of registration order (``named_modules``), which is the
    forward order for the uattr backbones; for a deep ensemble that walks the last member first.
    """
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))
    ]
    return layers[::-1]


def _normalise(maps: torch.Tensor, absolute: bool) -> torch.Tensor:
    """Per-image min-max scaling of maps [B, H, W] to [0, 1] (constant map -> 0): [B, 1, H, W]."""
    flat = maps.flatten(1)
    norm = minmax_rows(flat.abs() if absolute else flat)
    return norm.view(maps.shape[0], 1, *maps.shape[1:])


def map_ssim(
    a: torch.Tensor, b: torch.Tensor, absolute: bool = False, sigma: float = 1.5
) -> torch.Tensor:
    """SSIM between maps a and b [B, H, W], each min-max scaled to [0, 1] per image: float64 [B].

    torchmetrics' ``structural_similarity_index_measure`` (Gaussian window, ``sigma`` 1.5 as Wang et
    al. 2004, data range 1). ``absolute`` takes |map| before scaling (Adebayo et al. show both).
    The SSIM of a map with itself is 1.
    """
    a, b = check_maps(a, name="maps"), check_maps(b, name="randomised maps")
    if a.shape != b.shape:
        raise ValueError(
            f"maps of shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be compared."
        )
    radius = int(3.5 * sigma + 0.5)  # torchmetrics' Gaussian window radius
    if radius >= min(a.shape[1:]):
        raise ValueError(
            f"SSIM with sigma={sigma} needs maps larger than {radius}x{radius} pixels, got "
            f"{tuple(a.shape[1:])}; pass a smaller sigma."
        )
    return structural_similarity_index_measure(
        _normalise(a, absolute),
        _normalise(b.to(a.device), absolute),
        sigma=sigma,
        data_range=1.0,
        reduction="none",
    )


class RandomizationSanity(Metric):
    """Cascading model-parameter randomisation with SSIM (Adebayo et al. 2018; IBA's sanity check).

    ``RandomizationSanity(explain)`` where ``explain(model) -> maps [B, H, W]`` recomputes the maps
    of a fixed batch with the given model (e.g. ``lambda m: UABackprop(m)(x_probe, "epistemic")``),
    or ``explain(model, x)`` when ``update`` is given a batch ``x``.

    ``update(model, x=None)``: the original maps come from ``model``; then a **deep copy** (the
    model itself is never touched) has its layers re-initialised one at a time, cumulatively, in
    the order of :func:`randomizable_layers` (logits first) or of ``layers`` (dotted module names,
    output side first), each by its own ``reset_parameters()`` (the layer's default initialisation,
    as Quantus' MPRT) under the seed ``seed + step`` (the global RNG state is restored). After
    each step the maps are recomputed and compared with the originals by :func:`map_ssim`.

    ``compute()`` -> ``{"ssim@<layer>": mean SSIM over images after randomising down to that layer,
    ..., "ssim_final": after all of them}`` (float64 scalars; lower = the map depends more on the
    weights). :attr:`layer_names` lists the cascade. Per-image rows are ``cat`` states.

    UNCONFIRMED choices (the IBA paper's are not released): per-module granularity, min-max scaling
    per image, ``absolute=False``, SSIM ``sigma`` 1.5.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        explain: Explain,
        layers: Sequence[str] | None = None,
        seed: int = 0,
        absolute: bool = False,
        sigma: float = 1.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not callable(explain):
            raise TypeError(
                f"explain must be a callable model -> maps [B, H, W], got {type(explain).__name__}."
            )
        self.explain = explain
        self.layers = tuple(layers) if layers is not None else None
        self.seed = seed
        self.absolute = absolute
        self.sigma = sigma
        self.layer_names: tuple[str, ...] | None = None
        self.add_state("ssim_rows", default=[], dist_reduce_fx="cat")

    def _run(self, model: nn.Module, x: torch.Tensor | None) -> torch.Tensor:
        maps = self.explain(model) if x is None else self.explain(model, x)
        return check_maps(maps.detach(), name="explain(model)")

    def _cascade(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        if self.layers is None:
            layers = randomizable_layers(model)
        else:
            modules = dict(model.named_modules())
            missing = [n for n in self.layers if n not in modules]
            if missing:
                raise ValueError(
                    f"layers {missing} are not modules of the model; see model.named_modules()."
                )
            layers = [(n, modules[n]) for n in self.layers]
            no_reset = [n for n, m in layers if not hasattr(m, "reset_parameters")]
            if no_reset:
                raise ValueError(
                    f"layers {no_reset} have no reset_parameters() to re-initialise them."
                )
        if not layers:
            raise ValueError(
                "the model has no layer with parameters and reset_parameters() to randomise."
            )
        return layers

    def update(self, model: nn.Module, x: torch.Tensor | None = None) -> None:
        original = self._run(model, x)
        # A copy made under inference_mode would hold inference tensors that gradient-based
        # explainers cannot differentiate; build and re-initialise it as ordinary tensors.
        with torch.inference_mode(False), torch.no_grad():
            randomised = copy.deepcopy(model)
        layers = self._cascade(randomised)
        names = tuple(n for n, _ in layers)
        if self.layer_names is not None and names != self.layer_names:
            raise ValueError(
                f"the layer cascade changed between updates: {self.layer_names} vs {names}."
            )
        self.layer_names = names
        devices = sorted(
            {p.device.index or 0 for p in randomised.parameters() if p.device.type == "cuda"}
        )
        scores = []
        for step, (_, module) in enumerate(layers):
            with (
                torch.random.fork_rng(devices=devices),
                torch.inference_mode(False),
                torch.no_grad(),
            ):
                torch.manual_seed(self.seed + step)
                module.reset_parameters()
            scores.append(map_ssim(original, self._run(randomised, x), self.absolute, self.sigma))
        self.ssim_rows.append(torch.stack(scores, 1))

    def compute(self) -> dict[str, torch.Tensor]:
        rows = dim_zero_cat(self.ssim_rows)
        mean = rows.mean(0)
        names = self.layer_names or tuple(str(i) for i in range(rows.shape[1]))
        out = {f"ssim@{n}": mean[i] for i, n in enumerate(names)}
        out["ssim_final"] = mean[-1]
        return out
