"""MC dropout with fixed, seeded masks: determinism, batch independence, modes, grad contexts."""

import pytest
import torch
from torch import nn

from uattr.bayes import MCDropout, decompose_logits
from uattr.models import MLP, LeNet5


def _images(b=4, c=1, size=28, seed=0):
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def lenet():
    torch.manual_seed(0)
    return LeNet5(dropout=0.5)


class TinyNet(nn.Module):
    """flatten -> fc1 -> dropout -> fc2: the MC-dropout output can be computed by hand."""

    in_channels = 1

    def __init__(self, p=0.5):
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.drop = nn.Dropout(p)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(self.fc1(x.flatten(1))))


class ConvNet(nn.Module):
    """conv -> BatchNorm -> Dropout2d -> pool -> fc (channel dropout and running statistics)."""

    in_channels = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout2d(0.5)
        self.fc = nn.Linear(6, 3)
        self.fail = False

    def forward(self, x):
        if self.fail:
            raise RuntimeError("boom")
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.fc(h.mean((2, 3)))


def test_masks_are_fixed_per_seed_and_sample(lenet):
    x = _images()
    post = MCDropout(lenet, num_samples=5, seed=3)
    m1 = post.masks(x)
    assert list(m1) == ["drop0", "drop1", "drop2"]
    post.clear_mask_cache()
    m2 = post.masks(x)
    m3 = MCDropout(lenet, num_samples=5, seed=3).masks(x)  # a fresh wrapper rebuilds them
    m4 = MCDropout(lenet, num_samples=5, seed=4).masks(x)
    for name, mask in m1.items():
        assert mask.shape == (5, *{"drop0": (400,), "drop1": (120,), "drop2": (84,)}[name])
        assert torch.equal(mask, m2[name]) and torch.equal(mask, m3[name])
        assert not torch.equal(mask, m4[name])
        # Entries are 0 (dropped) or 1/(1-p) = 2 (kept and rescaled); samples differ.
        assert set(mask.unique().tolist()) == {0.0, 2.0}
        assert all(not torch.equal(mask[0], mask[s]) for s in range(1, 5))
    # The first s masks do not depend on S.
    m_more = post.masks(x, num_samples=8)
    assert all(torch.equal(m_more[n][:5], m1[n]) for n in m1)
    # About half of the 400 drop0 units are kept with p = 0.5.
    assert 0.4 < (m1["drop0"] > 0).float().mean().item() < 0.6


def test_sample_logits_matches_a_hand_computation():
    torch.manual_seed(0)
    net = TinyNet()
    post = MCDropout(net, num_samples=4, seed=1)
    x = _images(b=3, size=4)
    mask = post.masks(x)["drop"]  # [4, 8]
    expected = torch.stack([net.fc2(net.fc1(x.flatten(1)) * mask[s]) for s in range(4)])
    torch.testing.assert_close(post.sample_logits(x), expected)
    torch.testing.assert_close(post(x), expected)  # forward = sample_logits


def test_channel_dropout_masks_whole_channels():
    torch.manual_seed(0)
    post = MCDropout(ConvNet(), num_samples=6, seed=0)
    mask = post.masks(_images(b=2, size=8))["drop"]
    assert mask.shape == (6, 6, 1, 1)
    assert set(mask.unique().tolist()) <= {0.0, 2.0}


def test_sample_is_independent_of_batch_composition_and_size(lenet):
    post = MCDropout(lenet, num_samples=6, seed=0)
    x = _images(b=5)
    batch = post.sample_logits(x)
    assert batch.shape == (6, 5, 10)
    for b in range(5):
        alone = post.sample_logits(x[b : b + 1])
        torch.testing.assert_close(batch[:, b : b + 1], alone, atol=1e-5, rtol=1e-5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(post.sample_logits(x[perm]), batch[:, perm], atol=1e-5, rtol=1e-5)
    # Different samples are different sub-networks, so they disagree.
    assert not torch.allclose(batch[0], batch[1])
    # Uncertainty is deterministic from call to call.
    torch.testing.assert_close(decompose_logits(batch), decompose_logits(post.sample_logits(x)))


def test_expanded_inputs_give_the_same_logits(lenet):
    post = MCDropout(lenet, num_samples=3)
    x = _images(b=2)
    xs = x.repeat(3, 1, 1, 1)  # sample-major: row s*B + b
    torch.testing.assert_close(post.sample_logits_expanded(xs), post.sample_logits(x))
    with pytest.raises(ValueError, match="multiple of S"):
        post.sample_logits_expanded(xs[:5])


class ResidualAroundDropout(nn.Module):
    """fc1 -> dropout -> fc2, plus fc1's output added after the dropout (a skip around it)."""

    in_channels = 1

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc1(x.flatten(1))
        return self.fc2(self.drop(h) + h)


class TwoBranches(nn.Module):
    """Two parallel branches with their own dropout, summed."""

    in_channels = 1

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)
        self.drop_a = nn.Dropout(0.5)
        self.drop_b = nn.Dropout(0.5)

    def forward(self, x):
        h = self.fc(x.flatten(1))
        return self.drop_a(h) + self.drop_b(h)


def test_shared_prefix_equals_the_full_expansion(lenet):
    """The default forward runs the layers before the first dropout on B rows and expands there;
    logits and input gradients equal running all S*B rows through every layer."""
    shared, full = MCDropout(lenet, num_samples=5), MCDropout(lenet, 5, share_prefix=False)
    assert shared.share_prefix and not full.share_prefix
    seen = []
    handle = lenet.conv2.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    x = _images(b=3).requires_grad_(True)
    a = shared.sample_logits(x)
    (ga,) = torch.autograd.grad(decompose_logits(a).epistemic.sum(), x)
    b = full.sample_logits(x)
    (gb,) = torch.autograd.grad(decompose_logits(b).epistemic.sum(), x)
    handle.remove()
    assert seen == [3, 15]  # conv2 (before any dropout): B rows shared, S*B rows expanded
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)
    assert ga.abs().sum() > 0
    # One image is a valid broadcast of the pre-dropout tensors, also for a skip connection.
    net = ResidualAroundDropout()
    torch.testing.assert_close(
        MCDropout(net, 4).sample_logits(_images(b=1, size=4)),
        MCDropout(net, 4, share_prefix=False).sample_logits(_images(b=1, size=4)),
    )


def test_shared_prefix_errors_name_the_way_out():
    for net in (ResidualAroundDropout(), TwoBranches()):
        with pytest.raises(RuntimeError, match="share_prefix=False"):
            MCDropout(net, num_samples=4).sample_logits(_images(b=2, size=4))
        logits = MCDropout(net, 4, share_prefix=False).sample_logits(_images(b=2, size=4))
        assert logits.shape == (4, 2, 3)


def test_modes_restored_exactly_and_batchnorm_uses_running_stats():
    torch.manual_seed(0)
    net = ConvNet()
    net.train()
    net.bn.eval()  # a mixed pattern that a plain net.train()/eval() would lose
    before = {name: m.training for name, m in net.named_modules()}
    running = net.bn.running_mean.clone()
    post = MCDropout(net, num_samples=3)
    post.sample_logits(_images(b=2, size=8))
    assert {name: m.training for name, m in net.named_modules()} == before
    assert torch.equal(net.bn.running_mean, running)  # eval-mode BN: no running-stat update
    assert not net.drop._forward_hooks


def test_modes_and_hooks_restored_on_exception():
    net = ConvNet()
    net.train()
    net.drop.eval()
    before = {name: m.training for name, m in net.named_modules()}
    net.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        MCDropout(net, num_samples=2).sample_logits(_images(b=2, size=8))
    assert {name: m.training for name, m in net.named_modules()} == before
    assert not net.drop._forward_hooks


def test_training_forward_of_backbone_is_ordinary_dropout(lenet):
    post = MCDropout(lenet, num_samples=2)
    post.train()
    x = _images(b=2)
    torch.manual_seed(0)
    a = post.backbone(x)
    b = post.backbone(x)
    assert not torch.allclose(a, b)  # fresh masks per call, no hooks left behind


def test_works_under_no_grad_and_inference_mode_and_then_with_grad(lenet):
    post = MCDropout(lenet, num_samples=4)
    x = _images(b=3)
    with torch.inference_mode():  # first call builds (and caches) the masks here
        ref = post.sample_logits(x)
    with torch.no_grad():
        out = post.sample_logits(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, ref.clone())
    # Cached masks from inference mode must still be usable inside an autograd graph.
    xg = x.clone().requires_grad_()
    with torch.enable_grad():
        u = decompose_logits(post.sample_logits(xg)).epistemic.sum()
        (grad,) = torch.autograd.grad(u, xg)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    (grad2,) = torch.autograd.grad(decompose_logits(post.sample_logits(xg)).epistemic.sum(), xg)
    torch.testing.assert_close(grad, grad2)  # deterministic function of x


def test_gradients_reach_backbone_parameters(lenet):
    post = MCDropout(lenet, num_samples=2)
    post.sample_logits(_images(b=2)).sum().backward()
    assert lenet.fc1.weight.grad is not None and lenet.fc1.weight.grad.abs().sum() > 0


def test_zero_dropout_gives_identical_samples():
    post = MCDropout(MLP(dropout=0.0), num_samples=4)
    u = decompose_logits(post.sample_logits(_images(b=2)))
    assert torch.all(u.epistemic <= 1e-6)


def test_clear_errors(lenet):
    with pytest.raises(ValueError, match="no(ne)?.*dropout|dropout modules"):
        MCDropout(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="num_samples"):
        MCDropout(lenet, num_samples=0)
    with pytest.raises(ValueError, match="AlphaDropout"):
        MCDropout(nn.Sequential(nn.Flatten(), nn.AlphaDropout(0.2), nn.Linear(4, 2)))
    post = MCDropout(lenet)
    with pytest.raises(ValueError, match="num_samples"):
        post.sample_logits(_images(), num_samples=0)
    with pytest.raises(ValueError, match="channel"):
        post.sample_logits(_images(c=3))
    bad = _images()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        post.sample_logits(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_uses_the_same_sub_networks_as_cpu(lenet):
    # Masks are drawn on the CPU and moved, so sample s is the same network on every device.
    x = _images()
    cpu = MCDropout(lenet, num_samples=4).sample_logits(x)
    gpu = MCDropout(lenet.cuda(), num_samples=4).sample_logits(x.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
