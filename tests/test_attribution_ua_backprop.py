"""UA-Backprop: completeness, decomposition, routing limit, batched == reference loop (the
contract every method keeps is ``test_attribution_contract.py``).

Models are random (nothing is trained) with a scaled-up classifier so predictions are far from
uniform and the three uncertainties are all well above float rounding (epistemic ~0.1 nats).
"""

from __future__ import annotations

import pytest
import torch
from conftest import randomise_batchnorm
from torch import nn

from uattr.attribution.ua_backprop import (
    UABackprop,
    class_contributions,
    dirichlet_class_contributions,
    logit_contributions,
    pixel_distribution,
    routing,
)
from uattr.bayes import (
    DeepEnsemble,
    Evidential,
    MCDropout,
    decompose,
    dirichlet_uncertainty,
    uncertainty,
)
from uattr.models import CifarResNet18, LeNet5

KINDS = ("total", "aleatoric", "epistemic")


def _lenet(seed: int = 0, dropout: float = 0.5, scale: float = 15.0) -> LeNet5:
    torch.manual_seed(seed)
    net = LeNet5(dropout=dropout)
    with torch.no_grad():
        net.fc3.weight.mul_(scale)
    return net


def _images(b: int = 3, seed: int = 1, channels: int = 1, size: int = 28) -> torch.Tensor:
    return torch.rand(b, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    ensemble = DeepEnsemble.from_backbone(_lenet(), num_members=3)
    for member in ensemble.members:
        with torch.no_grad():
            member.fc3.weight.mul_(15.0)
    return {
        "mc": MCDropout(_lenet(), num_samples=4),
        "ensemble": ensemble,
        "evidential": Evidential(_lenet(scale=3.0)),
        "plain": _lenet(),
    }


def _reference_uncertainty(model: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """U [B] from the bayes module, in float64 (epistemic = total - aleatoric cancels)."""
    model.eval()  # as attribution runs it (an Evidential model does not toggle its modes)
    with torch.no_grad():
        if isinstance(model, Evidential):
            return getattr(dirichlet_uncertainty(model.alpha(x).double()), kind)
        if isinstance(model, MCDropout | DeepEnsemble):
            logits = model.sample_logits(x)
        else:
            logits = model(x)[None]
        return getattr(decompose(logits.double().softmax(-1)), kind)


@pytest.mark.parametrize("name", ["mc", "ensemble", "evidential", "plain"])
@pytest.mark.parametrize("kind", KINDS)
def test_completeness_and_nonnegative(models, name, kind):
    model, x = models[name], _images()
    maps = UABackprop(model)(x, kind)
    assert maps.shape == (3, 28, 28) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    u = _reference_uncertainty(model, x, kind)
    if name == "plain" and kind == "epistemic":
        assert torch.all(maps == 0)  # one sample: no epistemic uncertainty, no map
        return
    assert u.min() > 1e-3  # the check below is not vacuous
    torch.testing.assert_close(maps.sum((1, 2)).double(), u, rtol=1e-5, atol=0)


def test_vacuity_completeness(models):
    model, x = models["evidential"], _images()
    maps = UABackprop(model)(x, "vacuity")
    torch.testing.assert_close(
        maps.sum((1, 2)).double(), _reference_uncertainty(model, x, "vacuity"), rtol=1e-5, atol=0
    )


@pytest.mark.parametrize("name", ["mc", "ensemble", "evidential"])
def test_total_is_aleatoric_plus_epistemic(models, name):
    method, x = UABackprop(models[name]), _images()
    m_t, m_a, m_e = (method(x, kind) for kind in KINDS)
    torch.testing.assert_close(m_t, m_a + m_e, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"psi": "power"},
        {"psi": "power", "tau2": 0.5, "rescale": False},
        {"rescale": False, "tau2": 0.3},
        {"bias_terms": False},
        {"per_term_rescale": True},
        {"tau1": 1.0},
        {"classes_per_backward": 3},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults",
)
def test_options_keep_completeness(models, options):
    model, x = models["mc"], _images()
    maps = UABackprop(model, **options)(x, "epistemic")
    assert (maps >= 0).all()
    u = _reference_uncertainty(model, x, "epistemic")
    torch.testing.assert_close(maps.sum((1, 2)).double(), u, rtol=1e-5, atol=0)


def test_options_change_the_map(models):
    """psi, tau2 and the bias terms are real choices: each changes the map."""
    model, x = models["mc"], _images()
    base = UABackprop(model)(x, "total")
    for options in ({"psi": "power"}, {"tau2": 0.1}, {"bias_terms": False}):
        assert not torch.allclose(UABackprop(model, **options)(x, "total"), base, rtol=1e-3)


@pytest.mark.parametrize("name", ["mc", "ensemble", "evidential", "plain"])
@pytest.mark.parametrize("target", ["total", "epistemic", "class"])
def test_batched_equals_naive_loop(models, name, target):
    model, x = models[name], _images()
    if target == "class":
        target = torch.tensor([0, 3, 7])
    batched = UABackprop(model)(x, target)
    naive = UABackprop(model, naive=True)(x, target)
    chunked = UABackprop(model, classes_per_backward=None)(x, target)
    torch.testing.assert_close(batched, naive, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(chunked, naive, rtol=1e-5, atol=1e-9)


def test_batched_equals_naive_on_resnet_with_batchnorm():
    """BatchNorm folding, the in-place residual add and the Normalize bias on a real ResNet."""
    torch.manual_seed(0)
    net = CifarResNet18(num_classes=4, dropout=0.5)
    randomise_batchnorm(net)
    model, x = MCDropout(net, num_samples=2), _images(b=1, channels=3, size=16)
    batched = UABackprop(model, classes_per_backward=2)(x, "total")
    naive = UABackprop(model, naive=True)(x, "total")
    torch.testing.assert_close(batched, naive, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(
        batched.sum((1, 2)).double(), _reference_uncertainty(model, x, "total"), rtol=1e-5, atol=0
    )




def test_tau1_to_zero_keeps_each_class_on_its_own_logit(models):
    model, x = models["mc"], _images()
    for kind in KINDS:
        c = UABackprop(model, tau1=1e-4).contributions(x, kind)
        assert c.per_logit.shape == (4, 3, 10)
        torch.testing.assert_close(c.per_logit, c.per_class.expand_as(c.per_logit))
    routed = UABackprop(model, tau1=1e-4)(x, "epistemic")
    unrouted = UABackprop(model, tau1=0.0)(x, "epistemic")
    torch.testing.assert_close(routed, unrouted, rtol=1e-6, atol=1e-10)
    # At the default tau1 the routing does move some mass to other logits.
    assert not torch.allclose(UABackprop(model)(x, "epistemic"), unrouted, rtol=1e-4)


def test_routing_closed_form_matches_the_softmax_jacobian():
    """c_{j->i} = softmax_i((dg_j/dz_i) / (g_j tau1)) with the Jacobian taken by autograd."""
    z = torch.randn(2, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = z.softmax(-1)
    jac = torch.func.vmap(torch.func.vmap(torch.func.jacrev(lambda v: v.softmax(-1))))(z)
    expected = torch.softmax(jac / (g.unsqueeze(-1) * 0.3), dim=-1)  # jac[s, b, j, i]
    c = routing(g, 0.3)
    torch.testing.assert_close(c, expected)
    torch.testing.assert_close(c.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))
    per_class = torch.rand(3, 5, dtype=torch.float64)
    torch.testing.assert_close(
        logit_contributions(per_class, g, 0.3).sum(-1), per_class.sum(-1).expand(2, 3)
    )


def test_class_contributions_sum_to_the_decomposition():
    probs = torch.rand(6, 4, 10, dtype=torch.float64).softmax(-1)
    u = decompose(probs)
    for kind in KINDS:
        per_class = class_contributions(probs, kind)
        assert (per_class >= 0).all()
        torch.testing.assert_close(per_class.sum(-1), getattr(u, kind))
    alpha = torch.rand(4, 10, dtype=torch.float64) * 20 + 1
    du = dirichlet_uncertainty(alpha)
    for kind in (*KINDS, "vacuity"):
        per_class = dirichlet_class_contributions(alpha, kind)
        assert (per_class >= 0).all()
        torch.testing.assert_close(per_class.sum(-1), getattr(du, kind))


def test_pixel_distribution_sums_to_one_and_handles_flat_maps():
    v = torch.rand(2, 3, 5, 7)
    v[0, 0] = 0.0  # an all-zero map (a logit that does not depend on x)
    v[0, 1] = 4.0  # a constant map
    for psi in ("softmax", "power"):
        for rescale in (True, False):
            d = pixel_distribution(v, psi, 0.5, rescale)
            assert torch.isfinite(d).all() and (d >= 0).all()
            torch.testing.assert_close(d.sum((-2, -1)), torch.ones(2, 3))
    torch.testing.assert_close(
        pixel_distribution(v, "power", 1.0, True)[0, 0], torch.full((5, 7), 1 / 35)
    )


def test_class_target_sums_to_predictive_probability(models):
    model, x = models["mc"], _images()
    target = torch.tensor([2, 5, 9])
    maps = UABackprop(model)(x, target)
    assert (maps >= 0).all()
    with torch.no_grad():
        probs = model.sample_logits(x).softmax(-1).mean(0)
    torch.testing.assert_close(maps.sum((1, 2)), probs[torch.arange(3), target], rtol=1e-5, atol=0)
    assert torch.equal(UABackprop(model)(x, 5), UABackprop(model)(x, torch.tensor([5, 5, 5])))


def test_zero_uncertainty_gives_zero_maps():
    # Dropout p = 0: every MC sample is the same network, so the epistemic uncertainty is 0.
    model, x = MCDropout(_lenet(dropout=0.0), num_samples=3), _images()
    maps = UABackprop(model)(x, "epistemic")
    assert torch.isfinite(maps).all() and torch.all(maps == 0)
    assert uncertainty(model, x, "epistemic").abs().max() < 1e-6
    # A logit gap of 1e4: the softmax is exactly one-hot, total uncertainty is exactly 0.
    sure = _lenet()
    with torch.no_grad():
        sure.fc3.weight.zero_()
        sure.fc3.bias.copy_(torch.tensor([1e4] + [0.0] * 9))
    for model in (MCDropout(sure, num_samples=3), sure):
        for kind in KINDS:
            for naive in (False, True):
                maps = UABackprop(model, naive=naive)(x, kind)
                assert torch.isfinite(maps).all() and torch.all(maps == 0)


def test_arguments_and_targets_are_checked(models):
    x = _images()
    for bad in ({"tau1": -1.0}, {"tau2": 0.0}, {"psi": "max"}, {"classes_per_backward": 0}):
        with pytest.raises(ValueError):
            UABackprop(models["mc"], **bad)
    with pytest.raises(TypeError, match="renamed to 'classes_per_backward'"):
        UABackprop(models["mc"], class_chunk=2)
    method = UABackprop(models["mc"])
    with pytest.raises(TypeError, match="callable"):  # stage A needs the named decomposition
        method.contributions(x, lambda model, x: uncertainty(model, x, "total"))
    with pytest.raises(ValueError, match="vacuity"):
        method.contributions(x, "vacuity")
    with torch.no_grad():
        predicted = models["mc"].sample_logits(x).softmax(-1).mean(0).argmax(-1)
    torch.testing.assert_close(
        method.contributions(x, None).per_class, method.contributions(x, predicted).per_class
    )


def test_benchmark_script_runs(capsys):
    """benchmarks/attribution.py stays runnable (tiny sizes; timings are not asserted)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "attribution.py"
    spec = importlib.util.spec_from_file_location("bench_attribution", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(
        ["--batch", "2", "--samples", "2", "--runs", "1", "--warmup", "0", "--no-memory"]
        + ["--methods", "UA-Backprop", "FullGrad", "--iba-batch", "2"]
    )
    out = capsys.readouterr().out
    assert "UA-Backprop naive (s,i) loop" in out and "FullGrad" in out
    assert "batched vs naive" in out
    assert "Per-Sample IBA, one image at a time" in out and "batching gain" in out
