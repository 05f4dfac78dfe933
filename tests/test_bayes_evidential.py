"""Evidential deep learning (Sensoy et al., NeurIPS 2018): known-value vectors and cross-checks."""

import math

import pytest
import torch
from torch.distributions import Dirichlet, kl_divergence

from uattr.bayes import (
    Evidential,
    EvidentialLoss,
    annealing_coefficient,
    dirichlet_uncertainty,
    edl_digamma_loss,
    edl_log_loss,
    edl_mse_loss,
    kl_uniform_dirichlet,
)
from uattr.models import LeNet5

K = 10
ZERO_EVIDENCE = torch.ones(3, K, dtype=torch.float64)
TARGET = torch.tensor([0, 4, 9])


# Known values of Sensoy et al. (NeurIPS 2018) with zero evidence, alpha = 1 (K = 10, any true
# class): Eq. 5 (MSE loss) squared error 0.9 + variance 0.9 / 11, Eq. 3 (log loss) ln 10, Eq. 4
# (digamma loss) psi(10) - psi(1).
@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (edl_mse_loss, 0.9 + 90 / 1100),  # 0.981818: squared error 0.9 + variance 0.081818
        (edl_log_loss, math.log(10)),  # 2.302585
        (edl_digamma_loss, 2.828968253968254),  # psi(10) - psi(1) = H_9
    ],
)
def test_zero_evidence_loss_vectors(loss, expected):
    assert loss(ZERO_EVIDENCE, TARGET).item() == pytest.approx(expected, abs=1e-6)
    per_sample = loss(ZERO_EVIDENCE, TARGET, reduction="none")
    assert per_sample.shape == (3,)
    torch.testing.assert_close(per_sample, torch.full((3,), expected, dtype=torch.float64))


def test_kl_test_vector_and_torch_cross_check():
    alpha = torch.ones(1, K, dtype=torch.float64)
    alpha[0, 0] = 5.0
    # Target 1 has no evidence, so alpha_tilde = alpha = [5, 1, ..., 1] and the closed form is
    # lnG(14) - lnG(5) - lnG(10) + 4 (psi(5) - psi(14)), with psi(n) - psi(m) = H_{n-1} - H_{m-1}.
    harmonic = sum(1 / n for n in range(5, 14))  # psi(14) - psi(5)
    exact = math.lgamma(14) - math.lgamma(5) - math.lgamma(10) - 4 * harmonic
    kl = kl_uniform_dirichlet(alpha, torch.tensor([1])).item()
    assert kl == pytest.approx(exact, abs=1e-12)  # 2.18508086
    # An independently computed six-digit value, 2.185082 (its last digit is 1e-6 high), agrees.
    assert kl == pytest.approx(2.185082, abs=2e-6)
    # Evidence for the true class is removed: no penalty.
    assert kl_uniform_dirichlet(alpha, torch.tensor([0])).item() == pytest.approx(0.0, abs=1e-12)

    gen = torch.Generator().manual_seed(0)
    alpha = 1 + 5 * torch.rand(6, 4, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    y = torch.nn.functional.one_hot(target, 4).double()
    tilde = y + (1 - y) * alpha
    expected = kl_divergence(Dirichlet(tilde), Dirichlet(torch.ones_like(tilde)))
    torch.testing.assert_close(kl_uniform_dirichlet(alpha, target, reduction="none"), expected)


def test_zero_evidence_uncertainties():
    u = dirichlet_uncertainty(ZERO_EVIDENCE)
    torch.testing.assert_close(u.vacuity, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(u.total, torch.full((3,), math.log(K), dtype=torch.float64))
    # E[H(p)] under the flat Dirichlet = psi(K + 1) - psi(2) = H_10 - 1.
    h10 = sum(1 / n for n in range(1, 11))
    torch.testing.assert_close(u.aleatoric, torch.full((3,), h10 - 1, dtype=torch.float64))
    torch.testing.assert_close(u.epistemic, u.total - u.aleatoric)


def test_expected_entropy_matches_monte_carlo():
    alpha = torch.tensor(
        [[2.0, 1.0, 1.0], [10.0, 3.0, 0.5], [50.0, 50.0, 50.0]], dtype=torch.float64
    )
    torch.manual_seed(0)
    p = Dirichlet(alpha).sample((40_000,))  # [N, B, K]
    mc = torch.special.entr(p).sum(-1).mean(0)
    u = dirichlet_uncertainty(alpha)
    # The MC standard error is < 0.003 here; 0.01 is a loose, deterministic (seeded) bound.
    torch.testing.assert_close(u.aleatoric, mc, atol=0.01, rtol=0)
    assert torch.all(u.epistemic >= 0)
    # A sharp Dirichlet (lots of evidence) has almost no epistemic uncertainty.
    assert u.epistemic[2] < 0.01 < u.epistemic[0]


def test_dirichlet_uncertainty_is_differentiable():
    alpha = torch.tensor([[1.0, 1.0, 30.0], [3.0, 2.0, 1.0]], requires_grad=True)
    for value in dirichlet_uncertainty(alpha):
        (grad,) = torch.autograd.grad(value.sum(), alpha, retain_graph=True)
        assert torch.isfinite(grad).all()


def test_evidence_functions():
    backbone = torch.nn.Identity()
    z = torch.tensor([[-100.0, 0.0, 2.0, 100.0]])
    relu = Evidential(backbone).alpha(z)
    torch.testing.assert_close(relu, torch.tensor([[1.0, 1.0, 3.0, 101.0]]))
    exp = Evidential(backbone, evidence="exp")(z)
    torch.testing.assert_close(exp, 1 + torch.exp(torch.tensor([[-10.0, 0.0, 2.0, 10.0]])))
    soft = Evidential(backbone, evidence="softplus")(z)
    torch.testing.assert_close(soft, 1 + torch.nn.functional.softplus(z))
    with pytest.raises(ValueError, match="relu"):
        Evidential(backbone, evidence="sigmoid")


def test_evidential_model_on_images():
    model = Evidential(LeNet5())
    alpha = model(torch.rand(2, 1, 28, 28))
    assert alpha.shape == (2, 10) and torch.all(alpha >= 1)


def test_annealing_coefficient():
    assert [annealing_coefficient(e) for e in (0, 5, 10, 25)] == [0.0, 0.5, 1.0, 1.0]
    assert annealing_coefficient(1, annealing_step=4) == 0.25
    with pytest.raises(ValueError, match="annealing_step"):
        annealing_coefficient(1, annealing_step=0)
    with pytest.raises(ValueError, match="epoch"):
        annealing_coefficient(-1)


@pytest.mark.parametrize(
    ("kind", "data"), [("mse", edl_mse_loss), ("log", edl_log_loss), ("digamma", edl_digamma_loss)]
)
def test_evidential_loss_combines_data_term_and_annealed_kl(kind, data):
    gen = torch.Generator().manual_seed(1)
    alpha = (1 + 3 * torch.rand(5, 4, generator=gen)).requires_grad_()
    target = torch.tensor([0, 1, 2, 3, 1])
    loss = EvidentialLoss(kind)
    torch.testing.assert_close(loss(alpha, target, epoch=0), data(alpha, target))
    kl = kl_uniform_dirichlet(alpha, target)
    torch.testing.assert_close(loss(alpha, target, epoch=5), data(alpha, target) + 0.5 * kl)
    torch.testing.assert_close(loss(alpha, target, epoch=30), data(alpha, target) + kl)
    loss(alpha, target, epoch=3).backward()
    assert torch.isfinite(alpha.grad).all()


def test_loss_errors():
    with pytest.raises(ValueError, match="mse"):
        EvidentialLoss("nll")
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        edl_mse_loss(ZERO_EVIDENCE, torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        edl_log_loss(ZERO_EVIDENCE, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="LongTensor"):
        edl_digamma_loss(ZERO_EVIDENCE, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="reduction"):
        edl_mse_loss(ZERO_EVIDENCE, TARGET, reduction="sum")
    with pytest.raises(ValueError, match="> 0"):
        kl_uniform_dirichlet(torch.zeros(3, K), TARGET)
    with pytest.raises(ValueError, match="> 0"):
        dirichlet_uncertainty(torch.tensor([[1.0, float("nan")]]))
