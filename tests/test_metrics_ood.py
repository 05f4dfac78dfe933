"""OOD detection: agreement with scikit-learn and with naive threshold sweeps, known answers."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from uattr.metrics import OODDetection, ood_detection


def _scores(seed=0, n=300, m=200):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) + 1.0, torch.randn(m, generator=g)


def _sklearn(s_in, s_out):
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    s = np.r_[s_in.numpy(), s_out.numpy()].astype(np.float64)
    fpr, tpr, thr = roc_curve(y, s)
    return {
        "auroc": roc_auc_score(y, s),
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
        "fpr@95tpr": fpr[tpr >= 0.95].min(),
        "detection_acc": (0.5 * (tpr + 1 - fpr)).max(),
    }


@pytest.mark.parametrize("ties", [False, True])
def test_matches_sklearn(ties):
    s_in, s_out = _scores()
    if ties:  # coarse scores: many thresholds shared by in- and out-distribution samples
        s_in, s_out = s_in.mul(2).round(), s_out.mul(2).round()
    got = ood_detection(s_in, s_out)
    want = _sklearn(s_in, s_out)
    for key, value in want.items():
        assert got[key].item() == pytest.approx(value, abs=1e-10), key


def test_naive_threshold_sweep():
    # Independent of sklearn: every observed score as a threshold, "in" if score >= threshold.
    s_in, s_out = _scores(seed=1, n=40, m=30)
    best, fpr95 = 0.0, 1.0
    for t in torch.cat([s_in, s_out]).tolist():
        tpr = (s_in >= t).double().mean().item()
        fpr = (s_out >= t).double().mean().item()
        best = max(best, 0.5 * (tpr + 1 - fpr))
        if tpr >= 0.95:
            fpr95 = min(fpr95, fpr)
    pairs = (s_in[:, None] > s_out[None, :]).double() + 0.5 * (s_in[:, None] == s_out[None, :])
    got = ood_detection(s_in, s_out)
    assert got["auroc"].item() == pytest.approx(pairs.mean().item(), abs=1e-12)
    assert got["detection_acc"].item() == pytest.approx(best, abs=1e-12)
    assert got["fpr@95tpr"].item() == pytest.approx(fpr95, abs=1e-12)


def test_perfect_separation_and_reversal():
    s_in, s_out = torch.arange(10.0) + 100, torch.arange(10.0)
    got = ood_detection(s_in, s_out)
    for key, value in {
        "auroc": 1,
        "aupr_in": 1,
        "aupr_out": 1,
        "fpr@95tpr": 0,
        "detection_acc": 1,
    }.items():
        assert got[key].item() == pytest.approx(value), key
    worst = ood_detection(s_out, s_in)
    assert worst["auroc"].item() == pytest.approx(0.0)
    assert worst["fpr@95tpr"].item() == pytest.approx(1.0)


def test_large_scores_are_not_squashed():
    # Raw scores far outside [0, 1] must keep their order (no sigmoid saturation).
    got = ood_detection(torch.tensor([50.0, 60.0]), torch.tensor([40.0, 45.0]))
    assert got["auroc"].item() == 1.0


def test_metric_updates_reset_and_separate_loaders():
    s_in, s_out = _scores(seed=2)
    whole = ood_detection(s_in, s_out)
    m = OODDetection()
    m.update(s_in[:100], torch.empty(0))  # an in-distribution batch
    m.update(s_in[100:], s_out[:50])
    m.update(torch.empty(0), s_out[50:])  # an OOD batch
    got = m.compute()
    assert set(got) == {"auroc", "aupr_in", "aupr_out", "fpr@95tpr", "detection_acc"}
    for key in whole:
        assert torch.allclose(got[key], whole[key]), key
    m.reset()
    m.update(s_in[:10], s_out[:10])
    assert torch.allclose(m.compute()["auroc"], ood_detection(s_in[:10], s_out[:10])["auroc"])


def test_needs_both_sides():
    with pytest.raises(ValueError, match="at least one"):
        ood_detection(torch.randn(3), torch.empty(0))
    with pytest.raises(ValueError, match="NaN"):
        ood_detection(torch.tensor([float("nan")]), torch.randn(2))
