"""Per-Sample IBA: the bottleneck math against closed forms, batching, statistics, the contract.

Models are small random LeNet5s (no training needed: every property checked here holds for any
weights); the statistics are estimated from random images.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from uattr.attribution.iba import (
    Bottleneck,
    FeatureEstimator,
    PerSampleBottleneck,
    capacity,
    capacity_map,
    gaussian_smoothing,
)
from uattr.bayes import DeepEnsemble, Evidential, MCDropout
from uattr.bayes.outputs import (
    forward_posterior,
    log_predictive,
    module_device,
    posterior_uncertainty,
    predicted_class,
)
from uattr.models import LeNet5

H = W = 28


def _lenet(seed: int = 0, scale: float = 3.0) -> LeNet5:
    torch.manual_seed(seed)
    net = LeNet5(dropout=0.3)
    with torch.no_grad():  # sharper predictions than a fresh init, so the losses are not flat
        net.fc3.weight.mul_(scale)
    return net.eval()


def _images(b: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 1, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def post() -> MCDropout:
    return MCDropout(_lenet(), num_samples=4, seed=0)


@pytest.fixture(scope="module")
def estimator(post: MCDropout) -> FeatureEstimator:
    return FeatureEstimator.estimate(post, "backbone.conv2", _images(64, seed=7), n_samples=64)


def _method(post: nn.Module, estimator: FeatureEstimator, **kwargs) -> PerSampleBottleneck:
    kwargs = {"steps": 4, "noise_samples": 2, **kwargs}
    return PerSampleBottleneck(post, "backbone.conv2", estimator=estimator, **kwargs)


# ---- math --------------------------------------------------------------------------------
def test_capacity_closed_form() -> None:
    lam = torch.sigmoid(torch.tensor(5.0, dtype=torch.float64))
    # Spec A.5: 4.5067 nats = 6.5019 bits at alpha = 5, r' = 0; 5.0001 / 6.4801 nats at r' = 1 / 2.
    assert capacity(torch.tensor(0.0, dtype=torch.float64), lam) / math.log(2) == pytest.approx(
        6.5019, abs=1e-4
    )
    r = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    assert capacity(r, lam).tolist() == pytest.approx([4.5067, 5.0001, 6.4801], abs=1e-4)
    # and it is KL(N(lam r', (1-lam)^2) || N(0, 1)) everywhere
    r = torch.randn(100, dtype=torch.float64) * 3
    lam = torch.rand(100, dtype=torch.float64)
    expected = kl_divergence(Normal(lam * r, 1 - lam), Normal(0.0, 1.0))
    torch.testing.assert_close(capacity(r, lam), expected)
    # lambda = 0 passes no information; lambda = 1 is finite (floored), not inf
    assert capacity(torch.tensor([1.5]), torch.tensor([0.0])).item() == 0.0
    assert math.isfinite(capacity(torch.tensor([0.0]), torch.tensor([1.0])).item())


def test_gaussian_smoothing_kernel() -> None:
    lam = torch.rand(2, 3, 8, 8)
    assert torch.equal(gaussian_smoothing(lam, 0.0), lam)
    const = torch.full((1, 2, 6, 6), 0.7)
    torch.testing.assert_close(gaussian_smoothing(const, 1.0), const)  # kernel sums to 1
    delta = torch.zeros(1, 1, 11, 11)
    delta[0, 0, 5, 5] = 1.0
    out = gaussian_smoothing(delta, 1.0)[0, 0]
    assert (out[3:8, 3:8] > 0).all() and out.sum().item() == pytest.approx(1.0)
    assert out[2].abs().max() == 0 and out[5, 5] == out.max()  # 5 x 5 kernel, peak at centre
    # too small to reflect: replicate padding
    assert gaussian_smoothing(torch.rand(1, 1, 2, 2), 1.0).shape == (1, 1, 2, 2)


def test_capacity_map_keeps_total_bits() -> None:
    cap = torch.rand(2, 4, 7, 7)
    maps = capacity_map(cap, (7, 7))
    torch.testing.assert_close(maps.sum((1, 2)), cap.sum((1, 2, 3)) / math.log(2))
    big = capacity_map(cap, (28, 28))
    assert big.shape == (2, 28, 28)
    torch.testing.assert_close(big.sum((1, 2)), maps.sum((1, 2)), rtol=0.05, atol=0)


def test_lambda_one_leaves_the_output_unchanged(post: MCDropout, estimator) -> None:
    x = _images(3)
    layers = [("backbone.conv2", post.backbone.conv2)]
    bottleneck = Bottleneck(layers, [estimator.mean("backbone.conv2")],
                            [estimator.std("backbone.conv2")])
    clean = post.sample_logits(x)
    noise = torch.randn(2, 1, 16, 10, 10)
    with bottleneck.inserted(3, torch.ones(3, 16, 10, 10), noise, copies=2) as records:
        out = post.sample_logits(x)  # the bottleneck makes the 2 copies: rows k * B + b
    assert torch.equal(out, clean.repeat(1, 2, 1))
    # conv2 precedes every dropout: the S copies are identical and recorded once
    assert len(records) == 1 and records[0][1].shape == (1, 3, 16, 10, 10)
    # lambda = 0 replaces the features by the noise: the output no longer depends on x
    with bottleneck.inserted(3, torch.zeros(3, 16, 10, 10), noise[:1], copies=1):
        a = post.sample_logits(x)
    with bottleneck.inserted(3, torch.zeros(3, 16, 10, 10), noise[:1], copies=1):
        b = post.sample_logits(_images(3, seed=9))
    torch.testing.assert_close(a, b)


# ---- the per-sample optimisation ------------------------------------------------------------
@pytest.mark.parametrize("target", ["class", "total", "epistemic"])
def test_batched_equals_one_at_a_time(post, estimator, target) -> None:
    method = _method(post, estimator)
    x = _images(4)
    t = torch.tensor([3, 1, 4, 1]) if target == "class" else target
    maps = method(x, t)
    for i in range(4):
        ti = t[i : i + 1] if target == "class" else target
        torch.testing.assert_close(method(x[i : i + 1], ti), maps[i : i + 1], rtol=0, atol=1e-5)
    if target == "class":  # nor on the image's position or its neighbours
        perm = torch.tensor([2, 0, 3, 1])
        torch.testing.assert_close(method(x[perm], t[perm]), maps[perm], rtol=0, atol=1e-5)


def test_maps_finite_nonnegative_and_restricting(post, estimator) -> None:
    x = _images(4)
    maps = _method(post, estimator, steps=10)(x)  # default target: predicted class
    assert maps.shape == (4, H, W)
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    # before any update every element carries ~6.5 bits; beta = 10 must remove most of that
    unrestricted = _method(post, estimator, steps=1)(x)
    assert (maps.sum((1, 2)) < 0.5 * unrestricted.sum((1, 2))).all()
    initial_bits = unrestricted.sum((1, 2)) * (H * W) / (10 * 10)
    assert initial_bits.min() > 6.4 * 1600  # 16 x 10 x 10 elements at >= 6.5 bits each


def test_default_target_is_the_predicted_class(post, estimator) -> None:
    x = _images(3)
    method = _method(post, estimator)
    torch.testing.assert_close(method(x), method(x, predicted_class(post, x)))


def test_deterministic_and_seeded(post, estimator) -> None:
    x = _images(2)
    maps = _method(post, estimator)(x, "total")
    assert torch.equal(_method(post, estimator)(x, "total"), maps)
    assert not torch.equal(_method(post, estimator, seed=1)(x, "total"), maps)


def test_modes_params_and_grad_contexts(estimator) -> None:
    net = _lenet()
    net.train()
    net.drop1.eval()  # a mixed pattern must come back exactly
    post = MCDropout(net, num_samples=4, seed=0)
    flags = [m.training for m in post.modules()]
    params = [p.detach().clone() for p in post.parameters()]
    method = _method(post, estimator)
    x = _images(2)
    maps = method(x, "total")
    assert [m.training for m in post.modules()] == flags
    assert all(p.grad is None for p in post.parameters())  # no gradient leaks into the model
    assert all(torch.equal(a, b) for a, b in zip(params, post.parameters(), strict=True))
    with torch.no_grad():
        torch.testing.assert_close(method(x, "total"), maps)
    with torch.inference_mode():
        torch.testing.assert_close(method(x, "total"), maps)
        torch.testing.assert_close(method(x), method(x, predicted_class(post, x)))


def test_other_posteriors(estimator) -> None:
    x = _images(2)
    data = _images(32, seed=3)
    ens = DeepEnsemble([_lenet(0), _lenet(1)])
    method = PerSampleBottleneck(ens, "members.*.conv2", steps=3, noise_samples=2)
    method.estimate(data, n_samples=32)
    assert method.estimator.names == ["members.0.conv2", "members.1.conv2"]
    maps = method(x, "epistemic")
    torch.testing.assert_close(method(x[1:], "epistemic"), maps[1:], rtol=0, atol=1e-5)
    evid = Evidential(_lenet())
    method = PerSampleBottleneck(evid, "backbone.conv2", steps=3, noise_samples=2)
    method.estimate(data, n_samples=32)
    for target in ("vacuity", torch.tensor([0, 9])):
        maps = method(x, target)
        assert torch.isfinite(maps).all() and (maps >= 0).all()
    plain = _lenet()
    method = PerSampleBottleneck(plain, "conv2", steps=3, noise_samples=2)
    method.estimate(data, n_samples=32)
    assert method(x).shape == (2, H, W)


def test_layer_after_dropout_gets_every_posterior_copy() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.5),
                        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 14 * 14, 10))
    post = MCDropout(net, num_samples=3, seed=0)
    method = PerSampleBottleneck(post, "backbone.3", steps=3, noise_samples=2)
    method.estimate(_images(16, seed=5), n_samples=16)
    x = _images(3)
    means, stds = method._statistics()
    with Bottleneck(method.layers, means, stds).inserted(3) as records:
        post.sample_logits(x)
    assert records[0][1].shape == (3, 3, 4, 14, 14)  # the S copies differ after the dropout
    maps = method(x, "epistemic")
    torch.testing.assert_close(method(x[2:], "epistemic"), maps[2:], rtol=0, atol=1e-5)


def test_clear_errors(post, estimator) -> None:
    x = _images(2)
    with pytest.raises(RuntimeError, match="estimate"):
        PerSampleBottleneck(post, "backbone.conv2")(x)
    with pytest.raises(ValueError, match="backbone.conv2"):
        PerSampleBottleneck(post, "conv2", estimator=estimator)
    with pytest.raises(KeyError, match="backbone.conv1"):
        PerSampleBottleneck(post, "backbone.conv1", estimator=estimator)
    with pytest.raises(ValueError, match="vacuity"):
        _method(post, estimator)(x, "vacuity")
    with pytest.raises(ValueError, match="unknown target"):
        _method(post, estimator)(x, "entropy")
    with pytest.raises(ValueError, match="out of range"):
        _method(post, estimator)(x, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="NaN"):
        _method(post, estimator)(torch.full((1, 1, H, W), float("nan")))
    fc = FeatureEstimator.estimate(post, "backbone.fc1", _images(8), n_samples=8)
    with pytest.raises(ValueError, match="C, h, w"):
        PerSampleBottleneck(post, "backbone.fc1", estimator=fc)
    for bad in ({"steps": 0}, {"noise_samples": 0}, {"beta": -1.0}, {"uncertainty_tolerance": 0.0}):
        with pytest.raises(ValueError):
            _method(post, estimator, **bad)


# ---- the feature estimator ------------------------------------------------------------
def test_estimator_matches_torch_and_round_trips(post, tmp_path) -> None:
    data = _images(50, seed=4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, torch.zeros(50)),
                                         batch_size=16)
    est = FeatureEstimator.estimate(post, "backbone.conv2", loader, n_samples=40)
    with torch.no_grad():
        feats = []
        handle = post.backbone.conv2.register_forward_hook(lambda m, i, o: feats.append(o))
        forward_posterior(post, data[:40])
        handle.remove()
    f = feats[0].double()  # 40 rows: MCDropout runs the layers before its first dropout once
    assert f.shape[0] == 40
    assert est.count("backbone.conv2") == 40
    torch.testing.assert_close(est.mean("backbone.conv2"), f.mean(0).float())
    torch.testing.assert_close(est.std("backbone.conv2"), f.std(0).float())  # unbiased
    est.save(tmp_path / "est.pt")
    loaded = FeatureEstimator.load(tmp_path / "est.pt")
    assert torch.load(tmp_path / "est.pt", weights_only=True)["format"].startswith("uattr")
    assert torch.equal(loaded.mean("backbone.conv2"), est.mean("backbone.conv2"))
    assert torch.equal(loaded.std("backbone.conv2"), est.std("backbone.conv2"))
    x = _images(2)
    a = PerSampleBottleneck(post, "backbone.conv2", estimator=est, steps=2, noise_samples=2)(x)
    b = PerSampleBottleneck(post, "backbone.conv2", estimator=tmp_path / "est.pt", steps=2,
                            noise_samples=2)(x)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="feature estimator"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pt")
        FeatureEstimator.load(tmp_path / "bad.pt")


# ---- the posterior-output adapters and the metadata ---------------------------------------
def test_posterior_outputs_agree_with_the_posterior_api(post) -> None:
    """log_predictive / posterior_uncertainty of one raw forward equal the bayes API's values."""
    from uattr.bayes.posterior import model_uncertainties, predictive_distribution

    x = _images(3)
    for model in (post, Evidential(_lenet())):
        with torch.no_grad():
            out = forward_posterior(model, x)
            torch.testing.assert_close(log_predictive(model, out).exp(),
                                       predictive_distribution(model, x))
            for kind, value in model_uncertainties(model, x)._asdict().items():
                torch.testing.assert_close(posterior_uncertainty(model, out, kind), value)
    assert forward_posterior(post, x).shape == (4, 3, 10)  # [S, B, K]
    assert module_device(post) == torch.device("cpu")
    assert module_device(nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU


def test_metadata() -> None:
    assert PerSampleBottleneck.label == "Per-Sample IBA"
    assert PerSampleBottleneck.needs_layer and PerSampleBottleneck.needs_statistics
