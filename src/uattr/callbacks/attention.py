"""Uncertainty mitigation with attribution maps as attention (UA-Backprop, Wang et al. CVPR 2023).

The attention built from an uncertainty attribution map M(x) is

    A(x) = (1 - M(x)) * M(x),

small both on pixels with no attribution (background) and on the pixels that cause the
uncertainty, large on the informative pixels in between. The paper (sections 4, 5.2.2) normalises
M with a softmax over pixels and multiplies the last convolutional feature maps by (1 + alpha A),
retraining on a small subset with precomputed maps; this callback works on the input instead (M
min-max rescaled to [0, 1] per image, so A is in [0, 1/4], largest where M = 1/2), so it fits any
model unchanged (the paper tries input-space attention only in an ablation; ``docs/mitigation.md``).
The classifier is trained and evaluated on the attended image. The options of :func:`attend` are:

- ``"scale"`` (default): x * A / max A, A rescaled per image so its peak keeps the pixel as is
  (x * A alone would dim every image at least 4x, a shift the model's fixed input normalisation
  would have to absorb);
- ``"raw"``: x * A, the product taken literally on the input;
- ``"suppress"``: (1 - M) * x, another reading, which dims only the problematic pixels.

:class:`AttentionMitigation` applies this to every batch of ``fit`` (train and validation),
``validate``, ``test`` and ``predict``, so a mitigation run is evaluated like any other run and its
``val/*`` and ``test/*`` metrics are those of attended inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from uattr.attribution.base import Attribution
from uattr.attribution.registry import METHODS, build_method
from uattr.bayes import MCDropout
from uattr.bayes.posterior import check_uncertainty_kind
from uattr.common import check_choice, check_optional_positive_int
from uattr.lit.checkpoint import load_checkpoint
from uattr.modes import preserved_modes

__all__ = [
    "AttentionMitigation",
    "Apply",
    "AttentionModel",
    "attend",
    "attention_mask",
    "unit_maps",
]

Apply = Literal["scale", "raw", "suppress"]
AttentionModel = Literal["current", "frozen"]

#: a map whose per-image range is at most this fraction of its largest magnitude (float32
#: resolution) is treated as constant: it carries no information
_FLAT = 1e-6


def unit_maps(maps: torch.Tensor) -> torch.Tensor:
    """M: each map [B, H, W] min-max rescaled to [0, 1] per image.

    A constant map carries no information about where the uncertainty comes from; it becomes
    M = 1/2 everywhere, whose attention A = 1/4 is uniform, so :func:`attend` leaves the image as it
    is (``"scale"``) instead of dividing by a zero range.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape [B, H, W], got {tuple(maps.shape)}.")
    flat = maps.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1)
    span = flat.max(1).values.view(-1, 1, 1) - low
    flat_map = span <= _FLAT * flat.abs().max(1).values.view(-1, 1, 1)
    unit = (maps - low) / torch.where(flat_map, torch.ones_like(span), span)
    return torch.where(flat_map, torch.full_like(unit, 0.5), unit).clamp(0.0, 1.0)


def attention_mask(maps: torch.Tensor) -> torch.Tensor:
    """A(x) = (1 - M(x)) * M(x) [B, H, W], in [0, 1/4], for attribution maps [B, H, W].

    M is :func:`unit_maps` of the maps: the attention peaks (1/4) where M = 1/2 and vanishes where
    M = 0 (no attribution) or M = 1 (the most uncertainty-causing pixels).
    """
    unit = unit_maps(maps)
    return (1.0 - unit) * unit


def attend(x: torch.Tensor, maps: torch.Tensor, apply: Apply = "scale") -> torch.Tensor:
    """The attended images [B, C, H, W] (still in [0, 1]) for images ``x`` and maps [B, H, W].

    Args:
        x: images [B, C, H, W] in [0, 1].
        maps: attribution maps [B, H, W] of ``x`` (larger = more responsible for the uncertainty).
        apply: ``"scale"`` x * A / max A (per image; a map with A = 0 everywhere, i.e. M in {0, 1}
            only, leaves x unchanged), ``"raw"`` x * A, ``"suppress"`` (1 - M) * x. See the module
            docstring for why ``"scale"`` is the default.
    """
    check_choice(apply, get_args(Apply), "apply")
    if maps.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(
            f"maps must have shape [B, H, W] = {(x.shape[0], *x.shape[2:])} to attend images of "
            f"shape {tuple(x.shape)}, got {tuple(maps.shape)}."
        )
    maps = maps.to(device=x.device, dtype=x.dtype)
    if apply == "suppress":
        weight = 1.0 - unit_maps(maps)
    else:
        weight = attention_mask(maps)
        if apply == "scale":
            peak = weight.flatten(1).max(1).values.view(-1, 1, 1)
            weight = torch.where(peak > 0, weight / peak.clamp_min(1e-30), torch.ones_like(weight))
    return x * weight.unsqueeze(1)


class AttentionMitigation(Callback):
    """Fine-tune and evaluate on attended inputs x~ = attend(x, M(x)) (Wang et al. 2023).

    Before every training, validation, test and predict step it replaces the batch's images by
    :func:`attend` of the attribution maps of ``uncertainty`` computed by ``method`` on the
    model's posterior (``pl_module.posterior``). The maps are computed under their own
    ``enable_grad`` (also inside ``no_grad`` validation and ``inference_mode`` test loops) and
    returned detached, so the attended batch is a constant input: the training loss does not
    differentiate through the attribution, no parameter gradient is touched, and every
    submodule's train/eval flag is restored exactly. Each image's attention depends only on that
    image, so train, validation, test and predict attend identically, also under DDP.

    Args:
        method: a name of :data:`uattr.attribution.registry.METHODS` (``"ua_backprop"``,
            ``"gradient"``, ``"smoothgrad"``, ``"fullgrad"``, ``"integrated_gradients"``,
            ``"blur_ig"``, ...), or ``None`` for no attention: the control run, which fine-tunes
            with every other setting (including ``init_from``) identical.
        uncertainty: the uncertainty kind the maps explain (``"total"``, ``"aleatoric"``,
            ``"epistemic"``; ``"vacuity"`` for evidential models). Default ``"total"``: the
            predictive uncertainty that accuracy and NLL measure (the paper's choice UNCONFIRMED).
        method_kwargs: keyword arguments of the method's constructor (e.g. ``{"steps": 16}``).
        apply: how A is applied, see :func:`attend`.
        absolute: build M from ``|maps|``. Signed maps (IG, Blur IG by default) would otherwise
            give the largest attention to pixels of zero attribution; non-negative maps
            (UA-Backprop, FullGrad, |gradient|) are unaffected.
        attention_model: ``"current"`` computes the maps with the model being trained, at every
            step (the attention follows the fine-tuning); ``"frozen"`` with a frozen copy of the
            starting model (the ``init_from`` checkpoint, or the weights at setup), so A(x) is a
            fixed function of x. The copy is saved in the callback state, so a resumed run uses the
            same one.
        init_from: a checkpoint (``train.py`` ``.ckpt``, loaded with ``weights_only=True``) whose
            model weights are loaded at the first ``setup`` (strictly: same architecture). A
            ``--ckpt_path`` resume restores its own weights afterwards, so a resumed fine-tuning
            continues from where it stopped; ``None`` starts from the module's own initialisation.
            Weights only: the optimiser, epoch counter and RNG start fresh.
        attention_samples: MC-dropout posteriors only: compute the maps with the first S' of the
            posterior's fixed dropout samples (they do not depend on S) instead of all S, an
            S/S'-fold cheaper attention; the model's predictions still use all S. ``None``: all.
    """

    def __init__(
        self,
        method: str | None = "ua_backprop",
        uncertainty: str = "total",
        method_kwargs: dict[str, Any] | None = None,
        apply: Apply = "scale",
        absolute: bool = True,
        attention_model: AttentionModel = "current",
        init_from: str | None = None,
        attention_samples: int | None = None,
    ) -> None:
        super().__init__()
        if method is not None and method not in METHODS:
            raise ValueError(
                f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}, or "
                "None for the no-attention control."
            )
        if method is not None and not METHODS[method].explains_uncertainty:
            raise ValueError(
                f"{method} explains class scores only and cannot map the {uncertainty!r} "
                "uncertainty that the attention is built from; pick a method that explains "
                "uncertainty (e.g. ua_backprop, gradient)."
            )
        check_choice(apply, get_args(Apply), "apply")
        check_choice(attention_model, get_args(AttentionModel), "attention_model")
        self.method = method
        self.attention_samples = check_optional_positive_int(attention_samples, "attention_samples")
        self.uncertainty = uncertainty
        self.method_kwargs = dict(method_kwargs or {})
        self.apply = apply
        self.absolute = bool(absolute)
        self.attention_model = attention_model
        self.init_from = init_from
        self._initialised = False
        self._frozen: nn.Module | None = None
        self._attribution: Attribution | None = None
        self._attributed: nn.Module | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, uncertainty=self.uncertainty)

    # ---- the attention --------------------------------------------------------------------------
    def _model(self, pl_module: LightningModule) -> nn.Module:
        posterior = getattr(pl_module, "posterior", None)
        if not isinstance(posterior, nn.Module):
            raise TypeError(
                f"AttentionMitigation needs a module with a `posterior` (BayesianClassifier, "
                f"EvidentialClassifier); {type(pl_module).__name__} has none."
            )
        return posterior

    def _method(self, pl_module: LightningModule, device: torch.device) -> Attribution:
        if self.attention_model == "frozen":
            if self._frozen is None:  # a hook called without setup: freeze the weights now
                self._freeze(pl_module)
            model = self._frozen.to(device)
        else:
            model = self._model(pl_module)
        if self._attributed is not model:  # built once per explained model
            check_uncertainty_kind(model, self.uncertainty)
            self._attribution = build_method(self.method, model, **self.method_kwargs)
            self._attributed = model
        return self._attribution

    @contextmanager
    def _samples(self, model: nn.Module) -> Iterator[None]:
        """Use ``attention_samples`` posterior samples for the block; S is restored after it."""
        if self.attention_samples is None:
            yield
            return
        if not isinstance(model, MCDropout):
            raise ValueError(
                f"attention_samples applies to MCDropout posteriors only, not "
                f"{type(model).__name__}: set it to None."
            )
        saved = model.num_samples
        model.num_samples = self.attention_samples
        try:
            yield
        finally:
            model.num_samples = saved

    def attention_maps(self, pl_module: LightningModule, x: torch.Tensor) -> torch.Tensor:
        """The maps [B, H, W] that M is built from (``|maps|`` if ``absolute``), detached."""
        if self.method is None:
            raise RuntimeError("the no-attention control (method=None) computes no maps.")
        method = self._method(pl_module, x.device)
        with preserved_modes(pl_module), self._samples(method.model):
            maps = method(x, self.uncertainty)
        return maps.abs() if self.absolute else maps

    def attended(self, pl_module: LightningModule, x: torch.Tensor) -> torch.Tensor:
        """The images the module trains on / evaluates for ``x`` [B, C, H, W]."""
        if self.method is None:
            return x
        return attend(x, self.attention_maps(pl_module, x), self.apply)

    def _attend_batch(self, pl_module: LightningModule, batch: Any) -> None:
        if self.method is None:
            return
        x = batch[0] if isinstance(batch, list | tuple) else batch
        new = self.attended(pl_module, x)
        if isinstance(batch, list):
            batch[0] = new  # the loops pass this same list on to the step
        else:  # a tuple or a bare tensor cannot be rebound: overwrite the collated tensor
            x.copy_(new)

    # ---- starting point -------------------------------------------------------------------------
    def _freeze(self, pl_module: LightningModule) -> None:
        self._frozen = copy.deepcopy(self._model(pl_module)).requires_grad_(False).eval()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Once per callback: a `fit` followed by `test` in one process must not reload init_from.
        if self._initialised:
            return
        if self.init_from is not None:
            if not Path(self.init_from).is_file():
                raise FileNotFoundError(
                    f"init_from={self.init_from!r}: no checkpoint there (relative to "
                    f"{Path.cwd()}). Train the starting model first, e.g. `python train.py fit "
                    "--config configs/mnist5k_lenet_mcdropout.yaml` in this folder, or point "
                    "init_from at its .ckpt."
                )
            state = load_checkpoint(self.init_from)["state_dict"]
            try:
                pl_module.load_state_dict(state, strict=True)
            except RuntimeError as error:
                raise ValueError(
                    f"init_from={self.init_from!r} does not fit {type(pl_module).__name__}: "
                    "fine-tune with the model configuration of the run that wrote it. "
                    f"Details: {str(error).splitlines()[0]}"
                ) from error
        if self.method is not None and self.attention_model == "frozen":
            self._freeze(pl_module)
            ckpt_path = getattr(trainer, "ckpt_path", None)
            if stage != "fit" and ckpt_path:
                # validate/test/predict restore no callback state: evaluate with the frozen model
                # that the checkpoint's run trained with.
                saved = load_checkpoint(ckpt_path).get("callbacks", {}).get(self.state_key)
                if saved is not None:
                    self.load_state_dict(saved)
        self._initialised = True

    # ---- every loop -----------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._attend_batch(pl_module, batch)

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._attend_batch(pl_module, batch)

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._attend_batch(pl_module, batch)

    def on_predict_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._attend_batch(pl_module, batch)

    # ---- resume ---------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {
            "method": self.method, "uncertainty": self.uncertainty, "apply": self.apply,
            "absolute": self.absolute, "attention_model": self.attention_model,
            "attention_samples": self.attention_samples,
        }

    def state_dict(self) -> dict[str, Any]:
        frozen = None
        if self._frozen is not None:
            frozen = {k: v.detach().cpu() for k, v in self._frozen.state_dict().items()}
        return {"settings": self._settings(), "frozen_state_dict": frozen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved, now = state_dict.get("settings", {}), self._settings()
        if saved != now:
            changed = ", ".join(
                f"{k}: {saved.get(k)!r} -> {v!r}"
                for k, v in sorted(now.items())
                if saved.get(k) != v
            )
            raise ValueError(
                f"the checkpoint was written by an AttentionMitigation with different settings "
                f"({changed}); resume with the run's own configuration, or start a new "
                "fine-tuning with init_from."
            )
        frozen = state_dict.get("frozen_state_dict")
        if frozen is not None:
            if self._frozen is None:
                raise RuntimeError(
                    "cannot restore the frozen attention model before setup: resume through "
                    "Trainer.fit(..., ckpt_path=...)."
                )
            self._frozen.load_state_dict(frozen)
            self._attributed = None
