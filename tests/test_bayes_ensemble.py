"""Deep ensembles: deterministic re-initialisation, vectorised == loop, modes, hooks, errors."""

import pytest
import torch
from torch import nn

from uattr.bayes import DeepEnsemble
from uattr.models import MLP, CifarResNet18, LeNet5


def _images(b=3, c=1, size=28, seed=0):
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed))


def _both_paths(ensemble, fn):
    ensemble.vectorize = True
    assert ensemble.can_vectorize()
    vec = fn()
    ensemble.vectorize = False
    loop = fn()
    ensemble.vectorize = True
    return vec, loop


def test_from_backbone_is_deterministic_distinct_and_leaves_global_rng_alone():
    backbone = LeNet5()
    state = torch.get_rng_state()
    a = DeepEnsemble.from_backbone(backbone, num_members=3, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = DeepEnsemble.from_backbone(backbone, num_members=3, seed=7)
    c = DeepEnsemble.from_backbone(backbone, num_members=3, seed=8)
    w = [m.fc1.weight for m in a.members]
    assert a.num_samples == 3 and len(a.members) == 3
    for x, y in zip(a.members, b.members, strict=True):
        assert torch.equal(x.fc1.weight, y.fc1.weight)
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert not torch.equal(w[0], backbone.fc1.weight)
    # Seeds are seed + m, so member 1 of seed 7 is member 0 of seed 8.
    assert torch.equal(a.members[1].fc1.weight, c.members[0].fc1.weight)
    # Normalisation buffers are copied, not reset.
    assert torch.equal(a.members[0].normalize.weight, backbone.normalize.weight)


def test_vectorised_equals_loop_in_eval_mode():
    ens = DeepEnsemble.from_backbone(LeNet5(), num_members=4)
    ens.eval()
    x = _images()
    vec, loop = _both_paths(ens, lambda: ens.member_logits(x))
    assert vec.shape == (4, 3, 10)
    torch.testing.assert_close(vec, loop, atol=1e-6, rtol=0)
    vec, loop = _both_paths(ens, lambda: ens.sample_logits(x))
    torch.testing.assert_close(vec, loop, atol=1e-6, rtol=0)


def test_vectorised_equals_loop_in_train_mode_with_gradients():
    ens = DeepEnsemble.from_backbone(LeNet5(dropout=0.0), num_members=3)
    ens.train()
    x = _images().requires_grad_()

    def grads():
        out = ens.member_logits(x)
        loss = (out * torch.linspace(-1, 1, 10)).square().sum()
        params = [m.fc1.weight for m in ens.members] + [m.conv1.bias for m in ens.members]
        return out.detach(), torch.autograd.grad(loss, [x, *params])

    (vec, g_vec), (loop, g_loop) = _both_paths(ens, grads)
    torch.testing.assert_close(vec, loop, atol=1e-6, rtol=0)
    for a, b in zip(g_vec, g_loop, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_resnet_with_eval_batchnorm_vectorises():
    torch.manual_seed(0)
    ens = DeepEnsemble([CifarResNet18(), CifarResNet18()])
    ens.eval()
    x = _images(b=2, c=3, size=32)
    vec, loop = _both_paths(ens, lambda: ens.sample_logits(x))
    torch.testing.assert_close(vec, loop, atol=1e-5, rtol=1e-5)


def test_training_dropout_differs_between_members():
    ens = DeepEnsemble([MLP(dropout=0.5), MLP(dropout=0.5)])
    ens.members[1].load_state_dict(ens.members[0].state_dict())  # identical weights
    ens.train()
    torch.manual_seed(0)
    out = ens.member_logits(_images())
    assert not torch.allclose(out[0], out[1])  # randomness="different": own masks per member


def test_training_batchnorm_falls_back_to_loop_and_updates_each_member():
    class BNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).mean((2, 3)))

    ens = DeepEnsemble.from_backbone(BNNet(), num_members=2)
    ens.train()
    assert not ens.can_vectorize()
    ens.member_logits(_images(size=8))
    assert all(m.bn.num_batches_tracked.item() == 1 for m in ens.members)
    ens.eval()
    assert ens.can_vectorize()


def test_hooks_force_the_loop_so_every_member_hook_fires():
    ens = DeepEnsemble.from_backbone(MLP(), num_members=3)
    seen = []
    handles = [
        m.layers[1].register_forward_hook(lambda mod, i, o: seen.append(o.shape))
        for m in ens.members
    ]
    assert not ens.can_vectorize()
    ens.sample_logits(_images(b=2))
    assert seen == [torch.Size([2, 256])] * 3
    for h in handles:
        h.remove()
    assert ens.can_vectorize()


def test_sample_logits_is_deterministic_in_eval_and_restores_mixed_modes():
    ens = DeepEnsemble.from_backbone(LeNet5(dropout=0.5), num_members=2)
    ens.train()
    ens.members[1].drop1.eval()
    before = {n: m.training for n, m in ens.named_modules()}
    x = _images()
    a, b = ens.sample_logits(x), ens(x)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert {n: m.training for n, m in ens.named_modules()} == before
    torch.testing.assert_close(ens.sample_logits_expanded(x.repeat(2, 1, 1, 1)), a)


def test_works_under_no_grad_and_inference_mode():
    ens = DeepEnsemble.from_backbone(LeNet5(), num_members=2)
    x = _images()
    ref = ens.sample_logits(x).detach()
    with torch.no_grad():
        torch.testing.assert_close(ens.sample_logits(x), ref)
    with torch.inference_mode():
        torch.testing.assert_close(ens.sample_logits(x), ref)


def test_clear_errors():
    with pytest.raises(ValueError, match="at least one member"):
        DeepEnsemble([])
    with pytest.raises(ValueError, match="architecture"):
        DeepEnsemble([LeNet5(num_classes=10), LeNet5(num_classes=5)])
    with pytest.raises(ValueError, match="architecture"):
        DeepEnsemble([LeNet5(), MLP()])
    with pytest.raises(ValueError, match="num_members"):
        DeepEnsemble.from_backbone(LeNet5(), num_members=0)

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.temperature = nn.Parameter(torch.ones(1))

    with pytest.raises(ValueError, match="reset_parameters"):
        DeepEnsemble.from_backbone(Scaled(), num_members=2)
    ens = DeepEnsemble.from_backbone(LeNet5(), num_members=2)
    with pytest.raises(ValueError, match="channel"):
        ens.sample_logits(_images(c=3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_members_match_cpu_members():
    # Re-initialisation runs on a CPU copy, so the members do not depend on the device.
    torch.manual_seed(0)
    backbone = LeNet5()
    cpu = DeepEnsemble.from_backbone(backbone, num_members=2)
    gpu = DeepEnsemble.from_backbone(backbone.cuda(), num_members=2)
    assert all(p.is_cuda for p in gpu.parameters())
    x = _images()
    vec, loop = _both_paths(gpu, lambda: gpu.sample_logits(x.cuda()))
    torch.testing.assert_close(vec, loop, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vec.cpu(), cpu.sample_logits(x), atol=1e-4, rtol=1e-4)
