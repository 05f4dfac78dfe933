"""Attribution quality of uncertainty maps at validation time: blurring and anomaly tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from uattr.attribution.base import Attribution
from uattr.attribution.random_map import RandomMap
from uattr.attribution.registry import check_uncertainty_methods
from uattr.bayes.posterior import check_uncertainty_kind
from uattr.callbacks.probe import (
    DEFAULT_CHUNK,
    Probe,
    ProbeCallback,
    Stage,
    build_callback_methods,
    posterior_of,
    probe_uncertainties,
)
from uattr.common import check_positive_int
from uattr.data.perturbations import AnomalyPatch
from uattr.metrics.blurring import BlurringTest
from uattr.metrics.localization import AnomalyLocalization

__all__ = ["AttributionMetrics"]

_ANOMALY_PATCH_KEYS = frozenset({"patch_size", "fill"})
_ANOMALY_METRIC_KEYS = frozenset({"box_from", "q", "iou_threshold"})


def _settings(value: Mapping[str, Any] | bool | None, name: str) -> dict[str, Any] | None:
    """``True`` -> defaults ``{}``, ``False``/``None`` -> off, a mapping -> a copy of it."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(
        f"{name} must be a dict of settings, true (defaults) or false/null (off), got {value!r}."
    )


def _item_seed(seed: int, index: int) -> int:
    """A seed that depends only on ``(seed, dataset index)`` (SeedSequence hash of the pair)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0])


class AttributionMetrics(ProbeCallback):
    """Blurring test (MURR / AUC-URR) and anomaly localisation (IoU / ADA / pointing game) of
    each configured attribution method's uncertainty maps, every N validation epochs.

    On a fixed seeded probe of the validation set (test set in ``trainer.test``; see
    :mod:`uattr.callbacks.probe`), for each method in ``methods`` (names of
    :data:`uattr.attribution.registry.METHODS`, built on ``pl_module.posterior`` with
    ``method_kwargs[name]``; a trained ``"readout"``'s maps ignore the target, see
    :func:`~uattr.callbacks.probe.build_callback_methods`) and the ``uncertainty`` kind as the
    target:

    - **blurring test** (:class:`~uattr.metrics.BlurringTest`, settings ``blurring``): maps of the
      probe images, the uncertainty-reduction curve under blurring, and every key its ``compute``
      returns (``murr@2%``, ``auc_urr@2%``, ``murr_step@2%``, ...). With the default
      ``selection="above_median"`` the images are selected *before* attribution: U_0 of the whole
      probe is computed on every rank (one forward) and only images with U_0 at or above its
      median are attributed and blurred, which halves the dominant cost and gives exactly the
      metric's own rule (the median of all probe images, the same set on every rank).
    - **anomaly test** (:class:`~uattr.metrics.AnomalyLocalization`, settings ``anomaly``): an
      :class:`~uattr.data.AnomalyPatch` (seeded by ``probe_seed`` and each item's dataset index)
      is pasted into every probe image, and the maps of the patched images are scored against the
      patch boxes: ``iou``, ``ada``, ``pointing_game``. ``anomaly`` keys: ``patch_size`` (default:
      a quarter of the image side, 7 for 28-pixel MNIST as UA-Backprop's anomaly test),
      ``fill`` (AnomalyPatch), ``box_from``, ``q``, ``iou_threshold`` (AnomalyLocalization).

    Logged (epoch level, identical on every rank): ``<stage>/attr/<method>/<metric>`` with
    ``<stage>`` ``val`` (fit, validate) or ``test``. The metric state lives in torchmetrics
    (``cat``/``sum`` states), synced across DDP ranks in ``compute``; each rank attributes its shard
    ``rank::world_size`` of the probe, on the unwrapped ``pl_module.posterior`` (never the DDP
    wrapper), so a 2-process run logs the numbers of one process on the same probe. The
    ``random`` method's map of a probe item is seeded by (its seed, the item's dataset index)
    rather than by its position in a batch, for the same reason.

    Cost: the blurring test scores ~100 blurred copies per image and dominates. The defaults
    (16 probe images, so 8 blurred per method; every 5 epochs; three methods) keep ``fit`` of the
    default experiment within its benchmark budget (``benchmarks/callbacks.py``). Full protocols
    belong to ``evaluate.py``.

    Args:
        methods: attribution method names (class-only methods such as ``contrast_cam`` cannot
            explain an uncertainty and are refused).
        uncertainty: the explained and blurred uncertainty kind ("total", "aleatoric",
            "epistemic"; "vacuity" for evidential models).
        every_n_epochs: run after validation epochs e with (e + 1) % N == 0 in ``fit``; always in
            ``trainer.validate`` / ``trainer.test``. Never in the sanity check.
        probe_size: probe items (rounded down to a multiple of the world size under DDP; the
            blurring test needs at least two per rank).
        probe_seed: seeds the probe draw and the anomaly patches.
        blurring: :class:`~uattr.metrics.BlurringTest` keyword arguments (``fractions``,
            ``sigma``, ``selection``, ``batch_size``, ...); ``True`` for its defaults,
            ``False``/``None`` to skip the test. ``batch_size`` defaults to
            :data:`~uattr.callbacks.probe.DEFAULT_CHUNK` (32) blurred copies per call here,
            rather than the metric's 256 (the rows stay in a CPU's cache).
        anomaly: anomaly-test settings (above); ``True`` for the defaults, ``False``/``None`` to
            skip it.
        method_kwargs: ``{method name: constructor kwargs}``, e.g. ``{"ua_backprop": {"tau1":
            0.5}}``.
        batch_size: images per attribution call (16: UA-Backprop's S x K backward rows stay
            in cache on a CPU; raise it on a GPU).
    """

    def __init__(
        self,
        methods: Sequence[str] = ("ua_backprop", "gradient", "random"),
        uncertainty: str = "epistemic",
        every_n_epochs: int = 5,
        probe_size: int = 16,
        probe_seed: int = 0,
        blurring: dict[str, Any] | bool | None = True,
        anomaly: dict[str, Any] | bool | None = True,
        method_kwargs: dict[str, dict[str, Any]] | None = None,
        batch_size: int = 16,
    ) -> None:
        super().__init__(every_n_epochs, probe_size, probe_seed)
        self.methods, self.method_kwargs = check_uncertainty_methods(
            methods, uncertainty, method_kwargs
        )
        self.uncertainty = uncertainty
        self.blurring = _settings(blurring, "blurring")
        self.anomaly = _settings(anomaly, "anomaly")
        if self.blurring is None and self.anomaly is None:
            raise ValueError("both tests are off (blurring and anomaly): nothing to compute.")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.preselect = False
        if self.blurring is not None:
            # Validates the settings now; the metric used is rebuilt in _setup with selection="all".
            BlurringTest(uncertainty, **self.blurring)
            self.preselect = self.blurring.get("selection", "above_median") == "above_median"
        if self.anomaly is not None:
            unknown = set(self.anomaly) - _ANOMALY_PATCH_KEYS - _ANOMALY_METRIC_KEYS
            if unknown:
                raise ValueError(
                    f"unknown anomaly setting(s) {sorted(unknown)}; use "
                    f"{sorted(_ANOMALY_PATCH_KEYS | _ANOMALY_METRIC_KEYS)}."
                )
        self.metrics = nn.ModuleDict()
        self._patch: AnomalyPatch | None = None
        self._built_for: tuple[int, tuple[int, ...]] | None = None
        self._methods: dict[str, Callable[[torch.Tensor, Any], torch.Tensor]] = {}

    # ---- set-up ------------------------------------------------------------------------------
    def _setup(self, pl_module: LightningModule, probe: Probe, device: torch.device) -> None:
        posterior = posterior_of(pl_module)
        key = (id(posterior), tuple(probe.images.shape[1:]))
        if self._built_for != key:
            check_uncertainty_kind(posterior, self.uncertainty)
            self._methods = build_callback_methods(self.methods, pl_module, self.method_kwargs)
            metrics = nn.ModuleDict()
            height, width = probe.images.shape[-2:]
            if self.anomaly is not None:
                patch_size = self.anomaly.get("patch_size", max(1, round(min(height, width) / 4)))
                self._patch = AnomalyPatch(
                    patch_size, seed=self.probe_seed, fill=self.anomaly.get("fill", "noise")
                )
                localization = {k: v for k, v in self.anomaly.items() if k in _ANOMALY_METRIC_KEYS}
            for name in self.methods:
                per_method = nn.ModuleDict()
                if self.blurring is not None:
                    settings = {"batch_size": DEFAULT_CHUNK, **self.blurring}
                    if self.preselect:
                        settings["selection"] = "all"
                    per_method["blurring"] = BlurringTest(self.uncertainty, **settings)
                if self.anomaly is not None:
                    per_method["anomaly"] = AnomalyLocalization(patch_size, **localization)
                metrics[name] = per_method
            self.metrics = metrics
            self._built_for = key
        self.metrics.to(device)

    # ---- work --------------------------------------------------------------------------------
    def _maps(self, method: Attribution, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Maps [N, H, W] of ``x`` in chunks; random maps seeded per dataset index (class doc)."""
        if isinstance(method, RandomMap):
            return torch.cat(
                [
                    RandomMap(method.model, seed=_item_seed(method.seed, int(i)))(
                        x[j : j + 1], self.uncertainty
                    )
                    for j, i in enumerate(indices.tolist())
                ]
            )
        return torch.cat(
            [
                method(x[start : start + self.batch_size], self.uncertainty)
                for start in range(0, x.shape[0], self.batch_size)
            ]
        )

    def _blurring_set(self, posterior: nn.Module, probe: Probe, device: torch.device) -> Probe:
        """The probe items the blurring test scores (all ranks' items; identical on every rank)."""
        if not self.preselect:
            return probe
        u0 = probe_uncertainties(posterior, probe.images.to(device))[self.uncertainty].cpu()
        return probe[u0 >= torch.quantile(u0, 0.5)]

    def run(self, trainer: Trainer, pl_module: LightningModule, stage: Stage) -> dict[str, float]:
        posterior = posterior_of(pl_module)
        device = pl_module.device
        probe = self.probe(trainer, stage)
        self._setup(pl_module, probe, device)
        rank, world_size = trainer.global_rank, trainer.world_size
        blur_local = patched = boxes = None
        if self.blurring is not None:
            selected = self._blurring_set(posterior, probe, device)
            if len(selected) < world_size:
                raise ValueError(
                    f"the blurring test selected {len(selected)} probe image(s) for {world_size} "
                    f"processes; use probe_size >= {2 * world_size}."
                )
            blur_local = selected.shard(rank, world_size).to(device)
        if self.anomaly is not None:
            local = probe.shard(rank, world_size)
            patched, boxes = self._patch(local.images, index=local.indices)
            patched, boxes, patch_indices = patched.to(device), boxes.to(device), local.indices
        logs: dict[str, float] = {}
        for name, method in self._methods.items():
            metrics = self.metrics[name]
            results: dict[str, torch.Tensor] = {}
            if blur_local is not None:
                maps = self._maps(method, blur_local.images, blur_local.indices)
                metrics["blurring"].update(posterior, blur_local.images, maps)
                results.update(metrics["blurring"].compute())
                metrics["blurring"].reset()
            if patched is not None:
                maps = self._maps(method, patched, patch_indices)
                metrics["anomaly"].update(maps, boxes)
                results.update(metrics["anomaly"].compute())
                metrics["anomaly"].reset()
            for key, value in results.items():
                logs[f"{stage}/attr/{name}/{key}"] = float(value)
        return logs
