"""Shared LightningModule logic: input checks, optimisers, predictive metrics per stage."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, NamedTuple

import torch
import torchmetrics
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from uattr.common import check_images
from uattr.metrics.calibration import BrierScore, NegativeLogLikelihood

__all__ = ["ClassifierRoutine", "Prediction"]


class Prediction(NamedTuple):
    """A posterior predictive: ``probs`` [B, K] and named uncertainties, each [B] in nats."""

    probs: torch.Tensor
    uncertainties: dict[str, torch.Tensor]


def _is_plain(value: Any) -> bool:
    """True for values ``torch.load(weights_only=True)`` accepts in a checkpoint's hparams."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


class ClassifierRoutine(LightningModule):
    """Base for the image classifiers: one routine per task, the network injected (TorchUncertainty
    style). Subclasses define the training loss and the posterior predictive.

    Logged per epoch: ``train/loss``, ``train/acc``; for ``val`` and ``test``: ``acc``, ``nll``,
    ``ece`` (``ece_bins`` equal-width bins, torchmetrics), ``brier``, and the mean uncertainty of
    each kind the posterior defines under ``<stage>/uncertainty/<kind>`` (nats).

    Args:
        backbone: an ``nn.Module`` mapping images [B, C, H, W] in [0, 1] to logits [B, K].
        num_classes: K; ``None`` takes the backbone's ``num_classes`` attribute. Checked against
            the data module's ``num_classes`` at setup and the backbone's output on the first batch.
        optimizer: a callable ``params -> Optimizer`` (in YAML: ``class_path``/``init_args``).
        lr_scheduler: an optional callable ``optimizer -> LRScheduler`` (stepped per epoch).
        ece_bins: number of calibration bins.
    """

    uncertainty_kinds: tuple[str, ...] = ("total", "aleatoric", "epistemic")
    #: the model attribution methods and metrics explain (a posterior wrapper); set by subclasses
    posterior: nn.Module

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ece_bins: int = 15,
    ) -> None:
        super().__init__()
        if num_classes is None:
            num_classes = getattr(backbone, "num_classes", None)
            if num_classes is None:
                raise ValueError(
                    f"cannot tell how many classes {type(backbone).__name__} predicts: give "
                    "num_classes explicitly."
                )
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        self.num_classes = num_classes
        self.in_channels = getattr(backbone, "in_channels", None)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.eval_metrics = nn.ModuleDict(
            {stage: self._stage_metrics(num_classes, ece_bins) for stage in ("val", "test")}
        )
        self._checked_output = False

    def _stage_metrics(self, num_classes: int, ece_bins: int) -> nn.ModuleDict:
        metrics: dict[str, nn.Module] = {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "nll": NegativeLogLikelihood(),
            "ece": MulticlassCalibrationError(num_classes, n_bins=ece_bins, norm="l1"),
            "brier": BrierScore(),
        }
        for kind in self.uncertainty_kinds:
            metrics[f"uncertainty/{kind}"] = torchmetrics.MeanMetric()
        return nn.ModuleDict(metrics)

    # ---- what subclasses define -------------------------------------------------------------
    @abstractmethod
    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar loss, logits or probabilities [B, K] for the running train accuracy)."""

    @abstractmethod
    def predictive(self, x: torch.Tensor) -> Prediction:
        """The posterior predictive distribution and uncertainties for ``x`` [B, C, H, W]."""

    # ---- shared steps -----------------------------------------------------------------------
    def _check_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            raise ValueError(
                "expected batches (images [B, C, H, W], labels [B]) from the data module, "
                f"got {type(batch).__name__}."
            )
        x, y = batch[0], batch[1]
        check_images(x, channels=self.in_channels, name="batch images")
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape [B] = [{x.shape[0]}], got {tuple(y.shape)}.")
        return x, y

    def _check_output(self, scores: torch.Tensor) -> None:
        if not self._checked_output:
            if scores.shape[-1] != self.num_classes:
                raise ValueError(
                    f"the backbone outputs {scores.shape[-1]} logits but the data has "
                    f"{self.num_classes} classes: set the backbone's num_classes to "
                    f"{self.num_classes}."
                )
            self._checked_output = True

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.num_classes:
            raise ValueError(
                f"the data module {type(datamodule).__name__} has {data_classes} classes but the "
                f"model predicts {self.num_classes}: set the backbone's num_classes to "
                f"{data_classes}."
            )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = self._check_batch(batch)
        loss, scores = self.training_loss(x, y)
        self._check_output(scores)
        self.train_acc.update(scores.detach(), y)  # logged once per epoch (on_train_epoch_end)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def on_train_epoch_end(self) -> None:
        # Logged here, not per step: Lightning moves a logged Metric object to the device on every
        # self.log call, a noticeable share of a small model's training step
        # (docs/choices_and_timings.md).
        if self.train_acc.update_called:
            self.log("train/acc", self.train_acc.compute())  # synced across DDP ranks
        self.train_acc.reset()

    def _eval_step(self, batch: Any, stage: str) -> None:
        x, y = self._check_batch(batch)
        prediction = self.predictive(x)
        self._check_output(prediction.probs)
        metrics = self.eval_metrics[stage]
        probs = prediction.probs.clamp_min(0.0)
        for name in ("acc", "nll", "ece", "brier"):
            metrics[name].update(probs, y)
        for kind, values in prediction.uncertainties.items():
            metrics[f"uncertainty/{kind}"].update(values)
        for name, metric in metrics.items():
            self.log(
                f"{stage}/{name}",
                metric,
                on_step=False,
                on_epoch=True,
                prog_bar=name == "acc",
                batch_size=len(y),
            )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Prediction:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        check_images(x, channels=self.in_channels, name="batch images")
        return self.predictive(x)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_states_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        # Restored here, after the sanity check, whose loaders draw from the global RNG too.
        states = getattr(self, "_rng_states_to_restore", None)
        if states is not None:
            torch.set_rng_state(states["torch"])
            if states["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
            self._rng_states_to_restore = None

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Fresh dropout masks come from the global RNG: save it so a resumed run continues the
        # exact sequence of an uninterrupted one.
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        # Checkpoints must load with torch.load(weights_only=True). Under the CLI the hparams are
        # plain class_path/init_args dicts; a module built in Python would put objects there.
        hparams = checkpoint.get("hyper_parameters", {})
        dropped = [k for k, v in hparams.items() if not _is_plain(v)]
        if dropped:
            rank_zero_warn(
                f"not saving hyper-parameters {dropped} in the checkpoint: they are Python objects "
                "that torch.load(weights_only=True) refuses. Build the model through the CLI "
                "(train.py) to store its full configuration.",
            )
            for key in dropped:
                hparams.pop(key)
