"""The UA-Backprop paper's MNIST claim, tested honestly on the embedded default (slow).

Claim (Wang et al., CVPR 2023, Table 1, MNIST): UA-Backprop's epistemic MURR at 2% and 5% is
above Gradient's, FullGrad's, Integrated Gradients' and a random map's, and its AUC-URR below.

Protocol: the default experiment is trained from scratch (seeded, so deterministic on a CPU);
UA-Backprop's open choices are ablated on the VALIDATION split only; the claim is then checked on
the test split for the val-selected and the default setting, under both readings of "p%". The
paper's claim is an xfail when it does not hold, with the measured numbers in the reason; what we
do measure is asserted as a ranking with margins of several standard errors, so a regression
in the methods or the metrics shows up.
"""

from __future__ import annotations

import pytest
from conftest import ROOT, run_train_py

from uattr.evaluation import EvaluationSettings, run_suite
from uattr.lit.checkpoint import rebuild_from_checkpoint
from uattr.report import CLAIM_COMPETITORS, paper_claim

pytestmark = pytest.mark.slow

DEFAULT = ROOT / "configs" / "mnist5k_lenet_mcdropout.yaml"
METHODS = ("ua_backprop", *CLAIM_COMPETITORS)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("paper_claim")
    run_train_py(["fit", "--config", str(DEFAULT), "--trainer.logger=false"], cwd=workdir,
                 timeout=3600)
    ckpt = workdir / "checkpoints" / "mnist5k_lenet_mcdropout" / "last.ckpt"
    model, data, _ = rebuild_from_checkpoint(ckpt)
    suite = run_suite(model, data, EvaluationSettings(methods=METHODS, progress=False), "cpu")
    suite.claim = paper_claim(suite)
    return suite.to_json()


def _blur(results, key):
    return results["blurring"]["epistemic"]["methods"][key]


def _murr(results, key, p="2%"):
    entry = _blur(results, key)["per_image"][f"murr@{p}"]
    return entry["mean"], entry["se"]


def test_ablation_selects_on_validation_and_the_claim_is_checked_on_test(results):
    assert results["ablation"]["split"] == "val"
    claim = results["claim"]
    assert claim["applicable"] and claim["split"] == "test" and claim["missing"] == []
    assert set(claim["holds"]) >= {"ua_backprop/budget", "ua_backprop/step"}


def test_paper_claim_on_mnist(results):
    claim = results["claim"]
    if claim["holds_anywhere"]:
        return
    lines = []
    for name in claim["holds"]:
        ua, reading = name.split("/")
        failed = [c for c in claim["checks"][name] if not c["holds"]]
        lines.append(
            f"{ua} ({reading}): " + "; ".join(
                f"{c['metric']} UA {c['ua']:.3f} vs {c['competitor']} {c['other']:.3f}"
                for c in failed
            )
        )
    pytest.xfail(
        "the paper's MNIST claim does not hold on mnist5k/LeNet-5/MC dropout under any "
        "UA-Backprop setting tried (val-selected: "
        f"{results['ablation']['selected_name']}); failed comparisons: " + " | ".join(lines)
    )


def _paired(results, other, key):
    """UA-Backprop (default setting) minus ``other``, image by image: (mean, paired SE)."""
    d = results["blurring"]["epistemic"]["paired"][f"ua_backprop - {other}"][key]
    return d["mean"], d["se"]


@pytest.mark.parametrize("p", ["2%", "5%"])
def test_measured_ranking_is_stable(results, p):
    """What we measured on the test split (epistemic, budget reading; 50 digits), with margins.

    Measured (LeNet-5, MC dropout S = 20, seed 0): MURR@2% UA-Backprop 0.170, Gradient 0.185,
    FullGrad 0.211, IG 0.558, Blur IG 0.586, random 0.047; UA-Backprop minus Gradient
    -0.012 +- 0.021 (paired), minus random +0.126 +- 0.031; AUC-URR@2% UA-Backprop 1.40 vs
    random 1.02 (paired +0.38 +- 0.14): blurring the top pixels of a magnitude map raises the
    uncertainty on average, while the signed path methods remove most of it.
    """
    murr, auc = f"murr@{p}", f"auc_urr@{p}"
    # Integrated Gradients removes far more epistemic uncertainty than UA-Backprop and Gradient
    diff, se = _paired(results, "integrated_gradients", murr)
    assert diff < -3 * se, (diff, se)
    ig, ig_se = _murr(results, "integrated_gradients", p)
    grad, _ = _murr(results, "gradient", p)
    assert ig - 3 * ig_se > grad, (ig, ig_se, grad)
    # UA-Backprop beats a random map on MURR ...
    diff, se = _paired(results, "random", murr)
    assert diff > 2 * se, (diff, se)
    # ... but not on AUC-URR: its top pixels, blurred, raise the uncertainty on average
    diff, se = _paired(results, "random", auc)
    assert diff > 2 * se, (diff, se)
    # UA-Backprop and the plain gradient are tied on MURR (no significant difference)
    diff, se = _paired(results, "gradient", murr)
    assert abs(diff) < 2.5 * se, (diff, se)
    # every gradient-based method beats a random map on MURR
    rnd, rnd_se = _murr(results, "random", p)
    for key in ("gradient", "fullgrad", "integrated_gradients"):
        m, m_se = _murr(results, key, p)
        assert m - rnd > 2 * (m_se**2 + rnd_se**2) ** 0.5, (key, m, rnd)
