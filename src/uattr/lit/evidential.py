"""Evidential (Dirichlet) image classifier as a LightningModule."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from uattr.bayes import Evidential, EvidentialLoss, dirichlet_uncertainty
from uattr.lit.routine import ClassifierRoutine, Prediction

__all__ = ["EvidentialClassifier"]


class EvidentialClassifier(ClassifierRoutine):
    """Evidential deep learning (Sensoy, Kaplan & Kandemir, NeurIPS 2018).

    The backbone's K outputs become evidence e >= 0 (ReLU by default), alpha = e + 1 parameterises
    a Dirichlet over class probabilities. Loss: the chosen EDL data term plus the KL to the uniform
    Dirichlet, annealed by min(1, epoch / annealing_step) (epoch 0-based, as the reference code).
    Validation/test log the Dirichlet quantities: total = H(alpha/S), aleatoric = expected entropy,
    epistemic = mutual information, and vacuity u = K/S.

    Args:
        backbone: any classifier [B, C, H, W] -> [B, K].
        loss: ``"mse"`` (paper Eq. 5, the reference code's default), ``"log"`` or ``"digamma"``.
        evidence: ``"relu"``, ``"exp"`` or ``"softplus"``.
        annealing_step: epochs until the KL term has full weight.
        num_classes, optimizer, lr_scheduler, ece_bins: see :class:`ClassifierRoutine`.
    """

    uncertainty_kinds = ("total", "aleatoric", "epistemic", "vacuity")

    def __init__(
        self,
        backbone: nn.Module,
        loss: Literal["mse", "log", "digamma"] = "mse",
        evidence: Literal["relu", "exp", "softplus"] = "relu",
        annealing_step: int = 10,
        num_classes: int | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ece_bins: int = 15,
    ) -> None:
        super().__init__(backbone, num_classes, optimizer, lr_scheduler, ece_bins)
        self.save_hyperparameters()
        self.posterior = Evidential(backbone, evidence=evidence)
        self.loss_fn = EvidentialLoss(kind=loss, annealing_step=annealing_step)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.posterior.alpha(x)
        return self.loss_fn(alpha, y, self.current_epoch), alpha

    def predictive(self, x: torch.Tensor) -> Prediction:
        alpha = self.posterior.alpha(x)
        u = dirichlet_uncertainty(alpha)
        return Prediction(alpha / alpha.sum(-1, keepdim=True), u._asdict())
