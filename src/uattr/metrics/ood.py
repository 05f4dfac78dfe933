"""Out-of-distribution detection scores: AUROC, AUPR-In/Out, FPR at 95% TPR, detection accuracy.

Definitions follow the Mahalanobis-detector evaluation (Lee et al. 2018, ``calculate_log.py``),
used by the OLIVES OOD papers: in-distribution samples are the positive class and a **higher
score means more in-distribution**. To detect OOD inputs by uncertainty, pass
``score = -uncertainty``.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = ["OODDetection", "ood_detection"]

KEYS = ("auroc", "aupr_in", "aupr_out", "fpr@95tpr", "detection_acc")


def _check_scores(scores: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1:
        raise ValueError(
            f"{name} must be a 1-D tensor of scores (higher = more in-distribution), got "
            f"{getattr(scores, 'shape', type(scores).__name__)}."
        )
    if not torch.isfinite(scores).all():
        raise ValueError(f"{name} contains NaN or Inf scores.")
    return scores.detach().to(torch.float64)


def _roc(
    scores: torch.Tensor, positive: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fpr, tpr, precision) at every distinct threshold, highest first; fpr and tpr start at 0.

    The exact curve of sklearn's ``_binary_clf_curve``: tied scores enter together.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], positive[order].to(torch.float64)
    last_of_run = torch.cat([s[1:] != s[:-1], s.new_ones(1, dtype=torch.bool)])
    tp = torch.cumsum(y, 0)[last_of_run]
    fp = torch.cumsum(1.0 - y, 0)[last_of_run]
    precision = tp / (tp + fp)
    zero = s.new_zeros(1)
    tpr = torch.cat([zero, tp / tp[-1]])
    fpr = torch.cat([zero, fp / fp[-1]])
    return fpr, tpr, precision


def _average_precision(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Step-wise area under precision-recall, sum_n (R_n - R_{n-1}) P_n.

    The same as sklearn's ``average_precision_score``.
    """
    _, tpr, precision = _roc(scores, positive)
    return ((tpr[1:] - tpr[:-1]) * precision).sum()


def ood_detection(scores_in: torch.Tensor, scores_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """OOD-detection scores of in-distribution ``scores_in`` [N] vs OOD ``scores_out`` [M].

    Higher score = more in-distribution; in-distribution is the positive class. Returns
    (float64 scalars):

    - ``auroc``: area under the ROC curve (trapezoid over the exact curve; ties count half).
    - ``aupr_in``: average precision with in-distribution positive (sklearn's step-wise AUPR; the
      MAHA code integrates precision-recall slightly differently, so 3rd-decimal differences are
      expected there).
    - ``aupr_out``: average precision with OOD positive and the score negated.
    - ``fpr@95tpr``: the smallest FPR among thresholds whose TPR is at least 0.95 (1 - TNR@95TPR).
    - ``detection_acc``: max over thresholds of 0.5 * (TPR + 1 - FPR).
    """
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out")
    if s_in.numel() == 0 or s_out.numel() == 0:
        raise ValueError(
            f"OOD detection needs at least one in- and one out-of-distribution score, got "
            f"{s_in.numel()} and {s_out.numel()}."
        )
    s_out = s_out.to(s_in.device)
    scores = torch.cat([s_in, s_out])
    is_in = torch.cat(
        [torch.ones_like(s_in, dtype=torch.bool), torch.zeros_like(s_out, dtype=torch.bool)]
    )
    fpr, tpr, _ = _roc(scores, is_in)
    auroc = torch.trapezoid(tpr, fpr)
    fpr95 = fpr[tpr >= 0.95 - 1e-12].min()
    detection_acc = (0.5 * (tpr + 1.0 - fpr)).max()
    return {
        "auroc": auroc,
        "aupr_in": _average_precision(scores, is_in),
        "aupr_out": _average_precision(-scores, ~is_in),
        "fpr@95tpr": fpr95,
        "detection_acc": detection_acc,
    }


class OODDetection(Metric):
    """OOD-detection metric over all batches: see :func:`ood_detection` for the definitions.

    ``update(scores_in [N], scores_out [M])`` (either may be empty in a given call, e.g. separate
    in- and out-of-distribution loaders); higher score = more in-distribution (pass
    ``-uncertainty``). ``compute()`` -> ``{"auroc", "aupr_in", "aupr_out", "fpr@95tpr",
    "detection_acc"}``. Scores are kept in ``cat`` states, so the curves are exact after DDP sync.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores_in", default=[], dist_reduce_fx="cat")
        self.add_state("scores_out", default=[], dist_reduce_fx="cat")

    def update(self, scores_in: torch.Tensor, scores_out: torch.Tensor) -> None:
        self.scores_in.append(_check_scores(scores_in, "scores_in"))
        self.scores_out.append(_check_scores(scores_out, "scores_out"))

    def compute(self) -> dict[str, torch.Tensor]:
        return ood_detection(dim_zero_cat(self.scores_in), dim_zero_cat(self.scores_out))
