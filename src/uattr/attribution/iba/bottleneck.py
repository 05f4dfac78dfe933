"""Where the bottleneck goes and how it is inserted: one forward hook per layer replaces R by Z.

At a layer with features R [C, h, w] the bottleneck of Schulz et al. (ICLR 2020) returns

    Z = lambda * R + (1 - lambda) * eps,    eps ~ N(mu_R, sigma_R^2)   (per element),

and records R, from which :func:`~uattr.attribution.iba.capacity.capacity` measures what Z keeps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from uattr.attribution.cam import LayerSpec, resolve_layers
from uattr.attribution.iba.capacity import capacity

__all__ = ["Bottleneck", "named_layers"]


def named_layers(model: nn.Module, layer: LayerSpec) -> list[tuple[str, nn.Module]]:
    """``(dotted name, module)`` of every layer ``layer`` names (see
    :func:`uattr.attribution.cam.resolve_layers`: dotted names, ``*`` wildcards, modules)."""
    modules = resolve_layers(model, layer)
    names = {id(m): n for n, m in model.named_modules()}
    return [(names[id(m)], m) for m in modules]


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
