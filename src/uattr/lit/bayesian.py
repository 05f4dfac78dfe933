"""MC-dropout and deep-ensemble image classifiers as LightningModules."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from uattr.bayes import DeepEnsemble, MCDropout, decompose_logits, predictive_probs
from uattr.lit.routine import ClassifierRoutine, Prediction

__all__ = ["BayesianClassifier"]


class BayesianClassifier(ClassifierRoutine):
    """A Bayesian image classifier: MC dropout (Gal & Ghahramani 2016) or a deep ensemble
    (Lakshminarayanan et al. 2017) around one backbone.

    Training: MC dropout trains the backbone with ordinary fresh dropout and cross-entropy; an
    ensemble trains its M members on the same batches (vectorised), the loss being the sum of the
    members' mean cross-entropies so each member sees the gradient it would see alone.
    Validation/test: the posterior predictive is the mean of softmax over the S fixed posterior
    samples (``posterior.sample_logits``), with total/aleatoric/epistemic uncertainty from
    :func:`uattr.bayes.decompose_logits`.

    Args:
        backbone: an ``nn.Module`` with ``nn.Dropout`` layers (MC dropout) or any classifier
            (ensemble: deep-copied and re-initialised per member).
        method: ``"mc_dropout"`` or ``"ensemble"``.
        num_samples: S, posterior samples (MC dropout) or members (ensemble).
        posterior_seed: seeds the fixed dropout masks (MC dropout) or the member initialisations.
        share_prefix: MC dropout only: run the layers before the first dropout once for all S
            samples (default True; ``False`` for a backbone that combines tensors from before and
            after a dropout, see :class:`uattr.bayes.MCDropout`).
        num_classes, optimizer, lr_scheduler, ece_bins: see :class:`ClassifierRoutine`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        method: Literal["mc_dropout", "ensemble"] = "mc_dropout",
        num_samples: int = 20,
        posterior_seed: int = 0,
        share_prefix: bool = True,
        num_classes: int | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ece_bins: int = 15,
    ) -> None:
        super().__init__(backbone, num_classes, optimizer, lr_scheduler, ece_bins)
        self.save_hyperparameters()
        if method == "mc_dropout":
            self.posterior: nn.Module = MCDropout(
                backbone, num_samples, seed=posterior_seed, share_prefix=share_prefix
            )
        elif method == "ensemble":
            self.posterior = DeepEnsemble.from_backbone(backbone, num_samples, seed=posterior_seed)
        else:
            raise ValueError(f"unknown method {method!r}: use 'mc_dropout' or 'ensemble'.")
        self.method = method

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.method == "mc_dropout":
            logits = self.posterior.backbone(x)
            return F.cross_entropy(logits, y), logits
        logits = self.posterior.member_logits(x)  # [M, B, K]
        losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(logits.shape[0]), reduction="none")
        loss = losses.view(logits.shape[:2]).mean(1).sum()
        return loss, logits.softmax(-1).mean(0)

    def predictive(self, x: torch.Tensor) -> Prediction:
        logits = self.posterior.sample_logits(x)
        u = decompose_logits(logits)
        return Prediction(predictive_probs(logits), u._asdict())
