"""What the protocols of one evaluation share: model, test split, methods and clocks."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from uattr.attribution.base import Attribution
from uattr.attribution.registry import METHODS, build_method
from uattr.bayes.posterior import posterior_kind, predict, uncertainty
from uattr.common import EVIDENTIAL_UNCERTAINTY_KINDS, UNCERTAINTY_KINDS
from uattr.evaluation.methods import MethodRow, method_rows
from uattr.evaluation.progress import Progress
from uattr.modes import evaluating

if TYPE_CHECKING:
    from uattr.evaluation.suite import EvaluationSettings

__all__ = ["EvaluationContext", "headline_kind", "split_tensors", "uncertainty_kinds"]


def uncertainty_kinds(posterior: nn.Module) -> tuple[str, ...]:
    """The uncertainty kinds ``posterior`` defines, in report order."""
    if posterior_kind(posterior) == "evidential":
        return EVIDENTIAL_UNCERTAINTY_KINDS
    return UNCERTAINTY_KINDS


def headline_kind(posterior: nn.Module) -> str:
    """Epistemic (the UA-Backprop paper's headline), or total for a model without epistemic U."""
    return "total" if posterior_kind(posterior) == "deterministic" else "epistemic"


def split_tensors(data: Any, split: str, limit: int | None = None):
    """(images [N, C, H, W], labels [N]) of the first ``limit`` items of a data module's split.

    Items are read in dataset order, so item i keeps its index (seeded perturbations of the data
    module, if any, are those of its loaders)."""
    data.setup("test")
    dataset: Dataset | None = getattr(data, f"{split}_dataset", None)
    if dataset is None or len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(
            f"{type(data).__name__} has no {split} split (or it is empty); the evaluation needs "
            f"one. Configure a {split} split in the data module."
        )
    n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    subset = torch.utils.data.Subset(dataset, range(n))
    xs, ys = [], []
    for batch in DataLoader(subset, batch_size=256, shuffle=False):
        xs.append(batch[0])
        ys.append(batch[1])
    return torch.cat(xs), torch.cat(ys).long()


@dataclasses.dataclass
class EvaluationContext:
    """The shared state of one evaluation run.

    Attributes:
        posterior: the posterior wrapper evaluated (in eval mode, on ``device``).
        data: its data module.
        settings: the run's settings (every protocol's fields).
        methods: registry names of the attribution methods run.
        prebuilt: methods given ready-made (a readout loaded from its checkpoint), by name.
        x_test, y_test: the test images [N, C, H, W] (on ``device``) and labels [N].
        probs, uncertainties: posterior-predictive probabilities [N, K] and uncertainties
            ``{kind: [N]}`` of the test images (float64, CPU).
        resolved: settings resolved at run time (``blur_sigma``, ``patch_size``, ...), recorded in
            ``metrics.json`` in place of ``None`` defaults.
        timing: ``{stage: {"wall_s", "cpu_s"}}``; ``method_cpu``: attribution CPU s per row.
        selected_ua: UA-Backprop's kwargs chosen by the validation ablation (``None``: no
            ablation); set before the method rows are first used.
    """

    posterior: nn.Module
    data: Any
    settings: EvaluationSettings
    device: torch.device
    methods: tuple[str, ...]
    progress: Progress
    prebuilt: dict[str, Attribution] = dataclasses.field(default_factory=dict)
    x_test: torch.Tensor = dataclasses.field(default=None, repr=False)  # type: ignore[assignment]
    y_test: torch.Tensor = dataclasses.field(default=None, repr=False)  # type: ignore[assignment]
    probs: torch.Tensor = dataclasses.field(default=None, repr=False)  # type: ignore[assignment]
    uncertainties: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict, repr=False)
    resolved: dict[str, Any] = dataclasses.field(default_factory=dict)
    timing: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    method_cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    selected_ua: dict[str, Any] | None = None
    _rows: list[MethodRow] | None = dataclasses.field(default=None, repr=False)
    _built: dict[str, Attribution] = dataclasses.field(default_factory=dict, repr=False)

    # ---- the model and the test split ------------------------------------------------------
    @property
    def kinds(self) -> tuple[str, ...]:
        return uncertainty_kinds(self.posterior)

    @property
    def headline(self) -> str:
        return headline_kind(self.posterior)

    def load_test_split(self) -> None:
        """Read the test split (``calibration_images`` of it) and predict it once."""
        with self.timed("load data"):
            x, y = split_tensors(self.data, "test", self.settings.calibration_images)
            self.x_test, self.y_test = x.to(self.device), y.to(self.device)
        with self.timed("predictions (test)"):
            self.probs, self.uncertainties = self.predict(self.x_test)

    def split(self, name: str) -> torch.Tensor:
        """Every image of split ``name`` [N, C, H, W] on the device."""
        return split_tensors(self.data, name)[0].to(self.device)

    def predict(self, x: torch.Tensor, batch_size: int = 256):
        """(probs [N, K], {kind: [N]}) under no_grad in eval mode (float64 on the CPU)."""
        probs, us = [], []
        with evaluating(self.posterior), torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                p, u = predict(self.posterior, x[i : i + batch_size])
                probs.append(p.double().cpu())
                us.append({k: v.double().cpu() for k, v in u._asdict().items()})
        return torch.cat(probs), {k: torch.cat([u[k] for u in us]) for k in us[0]}

    def uncertainty(self, x: torch.Tensor, kind: str, batch_size: int = 256) -> torch.Tensor:
        """Uncertainty ``kind`` [N] of ``x`` (float64, CPU)."""
        with evaluating(self.posterior), torch.no_grad():
            return torch.cat(
                [uncertainty(self.posterior, x[i : i + batch_size], kind).double().cpu()
                 for i in range(0, x.shape[0], batch_size)]
            )

    # ---- methods -----------------------------------------------------------------------------
    @property
    def rows(self) -> list[MethodRow]:
        """The method rows of every table (fixed on first use, after the ablation)."""
        if self._rows is None:
            self._rows = method_rows(self.methods, self.selected_ua)
        return self._rows

    @property
    def rows_fixed(self) -> bool:
        return self._rows is not None

    def method(self, row: MethodRow) -> Attribution:
        """The attribution method of ``row``, built once (feature statistics estimated)."""
        if row.method in self.prebuilt:
            return self.prebuilt[row.method]
        if row.key not in self._built:
            with self.timed("build methods"):
                method = build_method(row.method, self.posterior, **row.kwargs)
                if METHODS[row.method].needs_statistics:
                    method.estimate(self.data, n_samples=self.settings.iba_samples)
                self._built[row.key] = method
        return self._built[row.key]

    def attribute(self, method: Attribution, x: torch.Tensor, target: Any,
                  account: str | None = None) -> torch.Tensor:
        """Maps [N, H, W] (CPU) of ``method`` in batches of ``attribution_batch``; the CPU
        seconds go to ``method_cpu[account]``."""
        cpu = time.process_time()
        batch = self.settings.attribution_batch
        maps = []
        for i in range(0, x.shape[0], batch):
            t = target if isinstance(target, str) else target[i : i + batch]
            maps.append(method(x[i : i + batch], t).cpu())
        if account is not None:
            self.method_cpu[account] = self.method_cpu.get(account, 0.0) + time.process_time() - cpu
        return torch.cat(maps)

    def attribute_row(self, row: MethodRow, x: torch.Tensor, target: Any) -> torch.Tensor:
        """:meth:`attribute` with the method of ``row``, accounted to the row."""
        return self.attribute(self.method(row), x, target, account=row.key)

    # ---- clocks ------------------------------------------------------------------------------
    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the wall and CPU seconds of the block to ``timing[name]``."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            entry = self.timing.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] += time.perf_counter() - wall
            entry["cpu_s"] += time.process_time() - cpu
