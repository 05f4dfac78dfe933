"""MC-dropout posterior (Gal & Ghahramani 2016) with fixed, seeded dropout masks per sample."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from uattr.common import check_images

__all__ = ["MCDropout", "SUPPORTED_DROPOUT", "mask_seed"]

#: Dropout modules whose masks :class:`MCDropout` fixes. ``nn.Dropout`` drops elements of the
#: feature shape; the ``DropoutNd`` kinds drop whole channels (dim 1).
SUPPORTED_DROPOUT: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
_CHANNEL_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def mask_seed(seed: int, module_index: int, sample: int) -> int:
    """The CPU generator seed of dropout module ``module_index``'s mask for sample ``sample``.

    A splitmix64 hash of the triple, so nearby triples give unrelated streams and the seed is
    the same on every platform and Python run (no ``hash()``, which is salted for strings).
    """
    z = 0
    for value in (seed, module_index, sample):
        z = _splitmix64(z ^ (value & _MASK64))
    return z


class MCDropout(nn.Module):
    """MC-dropout posterior: S fixed sub-networks theta^1..theta^S of one dropout backbone.

    Sample s applies, at every dropout module, a mask drawn once from a CPU ``torch.Generator``
    seeded by ``(seed, module index, s)`` (modules indexed in ``named_modules()`` order) and scaled
    by 1/(1-p). The mask is shared by all B images of the sample, so sample s is one deterministic
    network and U(x) is a deterministic, differentiable function of ``x``: independent of the batch
    size and composition, identical on every call, and the first s samples do not depend on S.
    ``nn.Dropout`` masks elements of the feature shape (everything after the batch dim); the
    ``DropoutNd`` kinds mask channels (dim 1), as their training-time forward does.

    During :meth:`sample_logits` the backbone runs in eval mode (BatchNorm uses running statistics;
    dropout is the identity) and forward hooks multiply the dropout outputs by the fixed masks;
    every submodule's ``training`` flag is restored exactly afterwards, even on exceptions.
    Training calls ``backbone(x)`` directly in train mode: ordinary fresh dropout.

    Shared prefix (``share_prefix=True``, the default): the layers before the first dropout are
    the same network for every sample, so :meth:`sample_logits` runs them once on the B rows and
    the first dropout call expands its output to the S*B sample-major rows. Same logits and
    gradients (to float rounding) for a fraction of the cost: for LeNet5 the convolutions, ~97% of
    a forward's FLOPs, run once instead of S times. It needs a backbone whose tensors from before
    the first dropout are not combined with tensors after it (a residual connection around a
    dropout); such a backbone raises an error that says to pass ``share_prefix=False``.
    Hooks on layers before the first dropout then see B rows instead of S*B.

    Dropout called through ``torch.nn.functional.dropout`` inside ``forward`` (not a module) cannot
    be seen and is the identity here. Each dropout module must see tensors whose dim 0 is the batch.

    Args:
        backbone: a classifier returning logits [B, K] with at least one supported dropout module
            (``nn.Dropout``, ``nn.Dropout1d/2d/3d``).
        num_samples: S, the default number of posterior samples.
        seed: selects the S sub-networks.
        share_prefix: compute the layers before the first dropout once for all S samples in
            :meth:`sample_logits` (default True; see above). :meth:`sample_logits_expanded` always
            runs every layer on its S*B rows.

    Raises:
        ValueError: no dropout module, an unsupported dropout kind (``AlphaDropout``), or
            ``num_samples < 1``.
    """

    def __init__(
        self, backbone: nn.Module, num_samples: int = 20, seed: int = 0, share_prefix: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}.")
        self.num_samples = _check_num_samples(num_samples)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}.")
        unsupported = [
            f"{name} ({type(m).__name__})"
            for name, m in backbone.named_modules()
            if isinstance(m, nn.modules.dropout._DropoutNd) and not isinstance(m, SUPPORTED_DROPOUT)
        ]
        if unsupported:
            raise ValueError(
                f"MCDropout supports nn.Dropout and nn.Dropout1d/2d/3d; the backbone also has "
                f"{', '.join(unsupported)}, whose masks it cannot fix. Replace them with "
                "nn.Dropout."
            )
        if not any(isinstance(m, SUPPORTED_DROPOUT) for m in backbone.modules()):
            raise ValueError(
                "MCDropout needs a backbone with dropout modules (nn.Dropout or "
                "nn.Dropout1d/2d/3d); "
                f"{type(backbone).__name__} has none, so every posterior sample would be the same "
                "network. Add nn.Dropout layers (e.g. LeNet5(dropout=0.25)) or use DeepEnsemble."
            )
        self.backbone = backbone
        self.seed = seed
        self.share_prefix = bool(share_prefix)
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    def dropout_modules(self) -> list[tuple[str, nn.Module]]:
        """``(qualified name, module)`` of every supported dropout module, in mask-index order."""
        return [
            (n, m) for n, m in self.backbone.named_modules() if isinstance(m, SUPPORTED_DROPOUT)
        ]

    def mask(
        self,
        module_index: int,
        feature_shape: tuple[int, ...],
        num_samples: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Scaled masks of dropout module ``module_index`` for samples 0..S-1, cached.

        Args:
            module_index: index into :meth:`dropout_modules`.
            feature_shape: the module's input shape without the batch dim.
            num_samples: S.

        Returns:
            [S, *feature_shape] for ``nn.Dropout``; [S, C, 1, ...] (per channel) for
            ``DropoutNd``. Entries are 0 or 1/(1-p). A plain tensor (never an inference tensor),
            so a mask first built under ``torch.inference_mode`` can later enter autograd graphs.
        """
        name, module = self.dropout_modules()[module_index]
        return self._mask(module_index, name, module, feature_shape, num_samples, device, dtype)

    def _mask(
        self,
        module_index: int,
        name: str,
        module: nn.Module,
        feature_shape: tuple[int, ...],
        num_samples: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        p = float(module.p)
        device = torch.device(device)
        key = (module_index, type(module), p, tuple(feature_shape), num_samples, device, dtype)
        cached = self._mask_cache.get(key)
        if cached is not None:
            return cached
        if isinstance(module, _CHANNEL_DROPOUT):
            if len(feature_shape) < 2:
                raise ValueError(
                    f"{name} ({type(module).__name__}) drops channels and needs inputs "
                    f"[N, C, ...]; it got per-row shape {tuple(feature_shape)}."
                )
            draw_shape = (feature_shape[0],) + (1,) * (len(feature_shape) - 1)
        else:
            draw_shape = tuple(feature_shape)
        with torch.inference_mode(False), torch.no_grad():
            masks = []
            for s in range(num_samples):
                gen = torch.Generator(device="cpu")
                gen.manual_seed(mask_seed(self.seed, module_index, s))
                keep = torch.rand(draw_shape, generator=gen, dtype=torch.float64) >= p
                masks.append(keep)
            scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
            stacked = (torch.stack(masks).to(torch.float64) * scale).to(device=device, dtype=dtype)
        self._mask_cache[key] = stacked
        return stacked

    def masks(self, x: torch.Tensor, num_samples: int | None = None) -> dict[str, torch.Tensor]:
        """The masks :meth:`sample_logits` applies for inputs shaped like ``x``, by module name.

        Runs one forward under ``no_grad``. Each value is [S, *feature_shape] (elementwise) or
        [S, C, 1, ...] (per channel), in the dtype/device the module saw.
        """
        record: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            self.sample_logits(x, num_samples, _record=record)
        return record

    def clear_mask_cache(self) -> None:
        """Forget cached masks (they are rebuilt, identically, on the next call)."""
        self._mask_cache.clear()

    @contextmanager
    def _fixed_masks(
        self, num_samples: int, width: int | None, record: dict[str, torch.Tensor] | None
    ) -> Iterator[dict[str, int | None]]:
        """Eval mode and the mask hooks for one forward; yields ``{"width": rows per sample}``.

        ``width``: the backbone runs on S*width sample-major rows; ``None``: it runs on the
        distinct rows only and the first dropout call expands them (shared prefix).
        """
        flags = [(m, m.training) for m in self.backbone.modules()]
        state = {"width": width}
        handles = []
        try:
            self.backbone.eval()
            for index, (name, module) in enumerate(self.dropout_modules()):
                handles.append(
                    module.register_forward_hook(
                        self._make_hook(index, name, module, num_samples, state, record)
                    )
                )
            yield state
        finally:
            for handle in handles:
                handle.remove()
            for m, flag in flags:
                m.training = flag

    def _make_hook(
        self,
        index: int,
        name: str,
        module: nn.Module,
        num_samples: int,
        state: dict[str, int | None],
        record: dict[str, torch.Tensor] | None,
    ):
        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if output.dim() < 2:
                raise RuntimeError(
                    f"MCDropout expected dropout module {name!r} to see batch-first tensors "
                    f"[N, ...], got shape {tuple(output.shape)}."
                )
            rows, feature_shape = output.shape[0], tuple(output.shape[1:])
            mask = self._mask(
                index, name, module, feature_shape, num_samples, output.device, output.dtype
            )
            if record is not None:
                record[name] = mask
            width = state["width"]
            if width is None:  # the first dropout of a shared-prefix forward: expand the rows
                state["width"] = rows
                out = output.unsqueeze(0) * mask.unsqueeze(1)  # [S, rows, ...], sample-major
                return out.reshape(num_samples * rows, *feature_shape)
            # Later dropouts (or every one of an expanded forward) see S*width rows, or a multiple
            # of them when a hook in between adds copies (the IBA bottleneck).
            if rows % (num_samples * width):
                raise RuntimeError(
                    f"MCDropout expected dropout module {name!r} to see S*B = {num_samples}*"
                    f"{width} = {num_samples * width} rows (or a multiple) in dim 0, got shape "
                    f"{tuple(output.shape)}. Dropout must act on batch-first tensors."
                )
            # Not in place: the input may be an inference tensor or needed by autograd.
            out = output.reshape(num_samples, rows // num_samples, *feature_shape)
            return (out * mask.unsqueeze(1)).reshape(rows, *feature_shape)

        return hook

    def sample_logits(
        self,
        x: torch.Tensor,
        num_samples: int | None = None,
        *,
        _record: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits of S fixed posterior samples in one forward of S*B rows.

        Args:
            x: images [B, C, H, W] in [0, 1].
            num_samples: S; defaults to ``self.num_samples``.

        Returns:
            logits [S, B, K]; ``[s, b]`` is image b through sub-network s. Differentiable w.r.t.
            ``x`` and the backbone's parameters; works under ``no_grad`` and ``inference_mode``.
        """
        check_images(x, getattr(self.backbone, "in_channels", None), name="MCDropout inputs")
        s = self.num_samples if num_samples is None else _check_num_samples(num_samples)
        if not self.share_prefix:
            xs = x.unsqueeze(0).expand(s, *x.shape).reshape(s * x.shape[0], *x.shape[1:])
            return self._forward_expanded(xs, s, x.shape[0], _record)
        try:
            with self._fixed_masks(s, None, _record) as state:
                logits = self.backbone(x)
            if state["width"] is None:
                raise RuntimeError("no dropout module was called during the forward.")
            return self._check_logits(logits, s, state["width"])
        except RuntimeError as error:
            raise RuntimeError(
                f"{error}\n(MCDropout ran the layers before the first dropout once for all "
                f"{s} samples, share_prefix=True; if the backbone combines a tensor from before "
                "a dropout with one after it, or has parallel branches with their own dropout, "
                "construct MCDropout(..., share_prefix=False).)"
            ) from error

    def sample_logits_expanded(
        self, xs: torch.Tensor, num_samples: int | None = None
    ) -> torch.Tensor:
        """Like :meth:`sample_logits` for an already expanded batch (useful as a gradient leaf).

        Args:
            xs: [S*B, C, H, W], sample-major: row ``s*B + b`` goes through sub-network s.
            num_samples: S; defaults to ``self.num_samples``; must divide ``xs.shape[0]``.

        Returns:
            logits [S, B, K].
        """
        check_images(xs, getattr(self.backbone, "in_channels", None), name="MCDropout inputs")
        s = self.num_samples if num_samples is None else _check_num_samples(num_samples)
        if xs.shape[0] % s:
            raise ValueError(
                f"expanded inputs have {xs.shape[0]} rows, not a multiple of S = {s}; expected "
                "[S*B, C, H, W] in sample-major order."
            )
        return self._forward_expanded(xs, s, xs.shape[0] // s, None)

    def _forward_expanded(
        self, xs: torch.Tensor, s: int, b: int, record: dict[str, torch.Tensor] | None
    ) -> torch.Tensor:
        with self._fixed_masks(s, b, record):
            logits = self.backbone(xs)
        return self._check_logits(logits, s, b)

    def _check_logits(self, logits: torch.Tensor, s: int, width: int) -> torch.Tensor:
        """[S*N, K] sample-major -> [S, N, K]; N is B (``width``), or a multiple of it when
        hooks add copies (the IBA bottleneck)."""
        if logits.dim() != 2 or logits.shape[0] % (s * width):
            raise RuntimeError(
                f"the backbone must return logits [S*B, K] = [{s}*{width}, K]; it returned "
                f"shape {tuple(logits.shape)}."
            )
        return logits.reshape(s, logits.shape[0] // s, logits.shape[1])

    forward = sample_logits

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, seed={self.seed}, share_prefix={self.share_prefix}"


def _check_num_samples(num_samples: int) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}.")
    return num_samples
