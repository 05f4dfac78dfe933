"""One entry point for every model kind: dispatch, values, gradients, modes, errors."""

import math

import pytest
import torch
from torch import nn

from uattr.bayes import (
    DeepEnsemble,
    DirichletPosterior,
    DirichletUncertainty,
    Evidential,
    MCDropout,
    SamplingPosterior,
    Uncertainty,
    decompose_logits,
    dirichlet_uncertainty,
    is_evidential,
    is_sampling,
    model_uncertainties,
    predict,
    predictive_distribution,
    sample_logits,
    uncertainty,
)
from uattr.bayes.posterior import EVIDENTIAL_UNCERTAINTY_KINDS, UNCERTAINTY_KINDS, posterior_kind
from uattr.models import LeNet5


def _images(b=3, seed=0):
    return torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _models():
    torch.manual_seed(0)
    return {
        "plain": LeNet5(),
        "mc": MCDropout(LeNet5(dropout=0.5), num_samples=4),
        "ensemble": DeepEnsemble.from_backbone(LeNet5(), num_members=3),
        "evidential": Evidential(LeNet5()),
    }


def test_kinds_and_dispatch():
    models = _models()
    assert [posterior_kind(m) for m in models.values()] == [
        "deterministic",
        "sampling",
        "sampling",
        "evidential",
    ]
    assert UNCERTAINTY_KINDS == ("total", "aleatoric", "epistemic")
    assert EVIDENTIAL_UNCERTAINTY_KINDS[-1] == "vacuity"


def test_plain_model_is_one_sample():
    model = _models()["plain"].eval()
    x = _images()
    probs = model(x).softmax(-1)
    entropy = torch.special.entr(probs).sum(-1)
    torch.testing.assert_close(uncertainty(model, x, "total"), entropy)
    torch.testing.assert_close(uncertainty(model, x, "aleatoric"), entropy)
    assert torch.all(uncertainty(model, x, "epistemic") == 0)
    torch.testing.assert_close(predictive_distribution(model, x), probs)
    assert sample_logits(model, x).shape == (1, 3, 10)


@pytest.mark.parametrize("name", ["mc", "ensemble"])
def test_sampling_models_use_their_samples(name):
    model = _models()[name]
    x = _images()
    logits = model.sample_logits(x)
    expected = decompose_logits(logits)
    for kind in UNCERTAINTY_KINDS:
        torch.testing.assert_close(uncertainty(model, x, kind), getattr(expected, kind))
    torch.testing.assert_close(predictive_distribution(model, x), logits.softmax(-1).mean(0))
    u = model_uncertainties(model, x)
    assert isinstance(u, Uncertainty)
    probs, u2 = predict(model, x)
    torch.testing.assert_close(probs, logits.softmax(-1).mean(0))
    torch.testing.assert_close(u2.total, u.total)


def test_evidential_model_uses_dirichlet():
    model = _models()["evidential"].eval()
    x = _images()
    alpha = model.alpha(x)
    expected = dirichlet_uncertainty(alpha)
    for kind in EVIDENTIAL_UNCERTAINTY_KINDS:
        torch.testing.assert_close(uncertainty(model, x, kind), getattr(expected, kind))
    expected_probs = alpha / alpha.sum(-1, keepdim=True)
    torch.testing.assert_close(predictive_distribution(model, x), expected_probs)
    assert isinstance(model_uncertainties(model, x), DirichletUncertainty)
    with pytest.raises(ValueError, match="evidential"):
        sample_logits(model, x)


@pytest.mark.parametrize("name", ["plain", "mc", "ensemble", "evidential"])
def test_uncertainty_is_differentiable_in_x_and_keeps_modes(name):
    model = _models()[name]
    model.train()
    first_dropout = next(m for m in model.modules() if isinstance(m, nn.Dropout))
    first_dropout.eval()  # a mixed pattern to preserve
    before = {n: m.training for n, m in model.named_modules()}
    if name in ("plain", "evidential"):  # evaluated as they are: use a dropout-free pattern
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        before = {n: m.training for n, m in model.named_modules()}
    x = _images().requires_grad_()
    kinds = EVIDENTIAL_UNCERTAINTY_KINDS if name == "evidential" else UNCERTAINTY_KINDS
    for kind in kinds:
        (grad,) = torch.autograd.grad(uncertainty(model, x, kind).sum(), x)
        assert torch.isfinite(grad).all()
    assert {n: m.training for n, m in model.named_modules()} == before


def test_works_under_inference_mode():
    x = _images()
    for model in _models().values():
        model.eval()
        ref = uncertainty(model, x, "total").detach()
        with torch.inference_mode():
            torch.testing.assert_close(uncertainty(model, x, "total"), ref)


def test_errors_are_checked_before_any_forward():
    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("the model must not run for an invalid kind")

    with pytest.raises(ValueError, match="total.*aleatoric.*epistemic"):
        uncertainty(Exploding(), _images(), "entropy")
    with pytest.raises(ValueError, match="vacuity.*evidential"):
        uncertainty(Exploding(), _images(), "vacuity")
    with pytest.raises(ValueError, match="vacuity"):
        uncertainty(_models()["mc"], _images(), "vacuity")
    assert math.isfinite(uncertainty(_models()["evidential"], _images(), "vacuity").sum().item())


def test_bad_inputs_and_outputs_are_reported():
    with pytest.raises(ValueError, match="NaN"):
        uncertainty(LeNet5(), torch.full((1, 1, 28, 28), float("nan")), "total")

    class Bad(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3].unsqueeze(-1)

    with pytest.raises(RuntimeError, match=r"logits \[B, K\]"):
        uncertainty(Bad(), _images(), "total")


def test_the_contract_is_structural():
    """Any module with the method is that kind of posterior (typing.Protocol), and the method
    must be callable: a parameter named alpha does not make a model evidential."""
    models = _models()
    assert isinstance(models["mc"], SamplingPosterior) and is_sampling(models["ensemble"])
    assert isinstance(models["evidential"], DirichletPosterior) and is_evidential(
        models["evidential"]
    )
    assert not is_sampling(models["plain"]) and not is_evidential(models["mc"])

    class TwoSamples(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = LeNet5()

        def sample_logits(self, x):
            return torch.stack([self.net(x), self.net(1 - x)])

    class AlphaParameter(LeNet5):
        def __init__(self):
            super().__init__()
            self.alpha = nn.Parameter(torch.ones(()))

    duck = TwoSamples().eval()
    assert posterior_kind(duck) == "sampling"
    x = _images()
    torch.testing.assert_close(
        uncertainty(duck, x, "total"), decompose_logits(duck.sample_logits(x)).total
    )
    assert posterior_kind(AlphaParameter()) == "deterministic"
