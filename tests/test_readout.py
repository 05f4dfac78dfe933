"""Readout Bottleneck: initialisation, a frozen classifier, checkpoints, maps, the CLI route."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ROOT
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from uattr.attribution.iba import ReadoutBottleneck, check_explains
from uattr.bayes import MCDropout
from uattr.cli import UattrCLI
from uattr.data import MNIST5k
from uattr.lit.readout import ReadoutBottleneckModule, load_readout
from uattr.models import LeNet5

READOUTS = ["backbone.conv1", "backbone.conv2", "backbone.fc1", "backbone.fc3"]


def _classifier(seed: int = 0) -> MCDropout:
    torch.manual_seed(seed)
    return MCDropout(LeNet5(dropout=0.3), num_samples=3, seed=0)


def _module(**kwargs) -> ReadoutBottleneckModule:
    kwargs = {"classifier": _classifier(), "input_shape": (1, 28, 28), "readout_layers": READOUTS,
              "estimator_samples": 64, **kwargs}
    return ReadoutBottleneckModule(**kwargs)


def _data() -> MNIST5k:
    return MNIST5k(split=(200, 50, 50), batch_size=25)


def _images(b: int = 3) -> torch.Tensor:
    return torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _maps(module: ReadoutBottleneckModule) -> ReadoutBottleneck:
    return ReadoutBottleneck(module.posterior, module.readout)


def test_initialisation_and_clamp() -> None:
    module = _module()
    readout = module.readout
    assert readout.feature_shape == (16, 10, 10)
    # 6 + 16 + 120 + 10 channels read; 1x1 convs F_in -> F_in/2 -> 2C -> C
    assert [c.in_channels for c in readout.net if hasattr(c, "in_channels")] == [152, 76, 32]
    assert readout.net[-1].bias.eq(5.0).all() and readout.net[-1].weight.abs().max() < 1e-3
    features = torch.randn(2, 152, 10, 10)
    alpha = readout.net(features)
    assert (alpha - 5.0).abs().max() < 0.05  # lambda starts at ~sigmoid(5): no restriction
    with torch.no_grad():
        readout.net[-1].bias.fill_(100.0)
    torch.testing.assert_close(readout.lam(features),
                               torch.sigmoid(torch.tensor(5.0)).expand(2, 16, 10, 10))
    with pytest.raises(RuntimeError, match="estimate"):
        readout.capacity(_images())


def test_training_leaves_the_classifier_bit_identical(tmp_path: Path) -> None:
    module = _module()
    classifier = module.posterior
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    readout_before = [p.detach().clone() for p in module.readout.net.parameters()]
    trainer = Trainer(
        max_epochs=1, limit_train_batches=4, limit_val_batches=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        accelerator="cpu",
        callbacks=[ModelCheckpoint(dirpath=tmp_path, filename="readout")],
    )
    trainer.fit(module, datamodule=_data())
    after = classifier.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad and p.grad is None for p in classifier.parameters())
    assert not any(m.training for m in classifier.modules())
    after_readout = list(module.readout.net.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(readout_before, after_readout, strict=True))
    assert bool(module.readout.estimated)
    assert {"train/loss", "val/loss", "val/ce", "val/acc", "val/capacity_bits"} <= set(
        trainer.callback_metrics)

    # the checkpoint is safe to load and restores the readout exactly
    ckpt = torch.load(tmp_path / "readout.ckpt", map_location="cpu", weights_only=True)
    fresh = _module()
    fresh.load_state_dict(ckpt["state_dict"])
    x = _images()
    torch.testing.assert_close(_maps(fresh)(x), _maps(module)(x))


def test_maps_one_forward_and_contract() -> None:
    module = _module()
    module.readout.estimate(_images(32), n_samples=32)
    method = _maps(module)
    calls = []
    handle = module.posterior.backbone.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    x = _images(4)
    maps = method(x)
    handle.remove()
    assert calls == [4 * 3]  # one forward of S * B rows
    assert maps.shape == (4, 28, 28) and torch.isfinite(maps).all() and (maps >= 0).all()
    torch.testing.assert_close(method(x, torch.tensor([1, 2, 3, 4])), maps)  # class-independent
    torch.testing.assert_close(method(x[2:3]), maps[2:3], rtol=1e-5, atol=1e-6)  # batch-indep.
    flags = [m.training for m in module.modules()]
    with torch.inference_mode():
        torch.testing.assert_close(method(x), maps)
    with torch.no_grad():
        torch.testing.assert_close(method(x), maps)
    assert [m.training for m in module.modules()] == flags
    with pytest.raises(ValueError, match="uncertainty"):
        method(x, "total")
    with pytest.raises(ValueError, match="out of range"):
        method(x, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(TypeError, match=r"pass its \.readout"):
        ReadoutBottleneck(module.posterior, module)


def test_a_readout_built_on_another_model_is_refused() -> None:
    module = _module()
    other = _classifier(seed=1)
    with pytest.raises(ValueError, match="another classifier"):
        ReadoutBottleneck(other, module.readout)
    with pytest.raises(ValueError, match="another classifier"):
        check_explains(module.readout, other)
    # a different module with the same weights (a classifier rebuilt from its checkpoint) is fine
    same = _classifier(seed=0)
    ReadoutBottleneck(same, module.readout)
    # the metadata the registry, the callbacks and evaluate.py read
    assert ReadoutBottleneck.label == "Readout IBA"
    assert ReadoutBottleneck.explains == frozenset({"class"})
    assert not ReadoutBottleneck.class_dependent
    assert ReadoutBottleneck.required_kwargs == ("readout",)


def test_missing_classifier_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="configs/mnist5k_lenet_mcdropout.yaml"):
        ReadoutBottleneckModule(classifier=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="input_shape"):
        ReadoutBottleneckModule(classifier=_classifier())


def test_cli_trains_a_readout_from_a_classifier_checkpoint(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    quick = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
             "--trainer.limit_val_batches=1", "--trainer.logger=false",
             "--trainer.num_sanity_val_steps=0"]
    UattrCLI(args=["fit", "--config", str(ROOT / "configs" / "mnist5k_lenet_mcdropout.yaml"),
                   *quick])
    classifier = tmp_path / "checkpoints" / "mnist5k_lenet_mcdropout" / "last.ckpt"
    assert classifier.is_file()
    cli = UattrCLI(args=["fit", "--config", str(ROOT / "configs" / "mnist5k_readout.yaml"),
                         "--model.init_args.estimator_samples=200", *quick])
    assert cli.trainer.global_step == 2
    path = tmp_path / "checkpoints" / "mnist5k_readout" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert "uattr_config" in ckpt
    method = load_readout(path, cli.model.posterior)  # rebuilt from the checkpoint alone
    assert method.readout is not cli.model.readout
    x = _images(2)
    torch.testing.assert_close(method(x), _maps(cli.model)(x))
    # the classifier inside the readout is the checkpoint's, unchanged by the readout's training
    reference = torch.load(classifier, map_location="cpu", weights_only=True)["state_dict"]
    inside = method.readout.model.state_dict()
    weights = {k.removeprefix("posterior."): v for k, v in reference.items()
               if k.startswith("posterior.")}
    assert weights.keys() == inside.keys()
    assert all(torch.equal(weights[k], inside[k]) for k in weights)
    # loading checks what it loads
    with pytest.raises(FileNotFoundError, match="configs/mnist5k_readout.yaml"):
        load_readout(tmp_path / "missing.ckpt", cli.model.posterior)
    with pytest.raises(ValueError, match="not of a readout bottleneck"):
        load_readout(classifier, cli.model.posterior)
    with pytest.raises(ValueError, match="another classifier"):
        load_readout(path, _classifier(seed=1))
    # a callback's "readout" given as a checkpoint path explains the classifier it is attached to
    from uattr.callbacks.probe import build_callback_methods
    from uattr.lit import rebuild_from_checkpoint

    classifier_module, _, _ = rebuild_from_checkpoint(classifier)
    methods = build_callback_methods(
        ["readout"], classifier_module, {"readout": {"readout": str(path)}}
    )
    torch.testing.assert_close(methods["readout"](x, "total"), method(x))  # target-free


def test_validation_callbacks_show_and_score_the_readout_while_it_trains(tmp_path: Path) -> None:
    """"readout" in the callbacks' methods: its maps come from the module being trained (no
    checkpoint needed), ignore the uncertainty target, and are scored like any other map."""
    import math

    from uattr.callbacks import AttributionImages, AttributionMetrics

    images = AttributionImages(methods=("readout", "gradient"), num_images=2, every_n_epochs=1)
    metrics = AttributionMetrics(methods=("readout", "random"), probe_size=4, every_n_epochs=1,
                                 batch_size=4, uncertainty="total")
    trainer = Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=tmp_path, accelerator="cpu", num_sanity_val_steps=0,
        callbacks=[images, metrics],
    )
    trainer.fit(_module(), datamodule=_data())
    logged = trainer.callback_metrics
    assert math.isfinite(logged["val/attr/readout/murr@5%"].item())
    assert 0.0 <= logged["val/attr/readout/iou"].item() <= 1.0
    assert images.saved and images.saved[0].is_file()
    # without a readout checkpoint, a module that trains none has no readout to show
    from uattr.callbacks.probe import build_callback_methods
    from uattr.lit import BayesianClassifier
    from uattr.models import LeNet5

    with pytest.raises(ValueError, match="needs a trained readout"):
        build_callback_methods(["readout"], BayesianClassifier(LeNet5()), {})


def test_bottleneck_maps_feed_the_degradation_bbox_and_sensitivity_metrics() -> None:
    """Per-Sample IBA and Readout maps are plain [B, H, W] maps: every map metric takes them."""
    import math

    from uattr.attribution.iba import PerSampleBottleneck
    from uattr.metrics import BoundingBoxRatio, Degradation, SensitivityN

    module = _module()
    data = _data()
    module.readout.estimate(data, 64)
    classifier = module.posterior
    iba = PerSampleBottleneck(classifier, "backbone.conv2", beta=1.0, steps=3, noise_samples=2)
    iba.estimate(data, n_samples=64)
    x = _images(4)
    boxes = torch.tensor([[4, 4, 12, 12]] * 4)  # xyxy, exclusive
    for maps in (iba(x), _maps(module)(x)):
        assert maps.shape == (4, 28, 28) and (maps >= 0).all()
        sensitivity = SensitivityN(n_values=(4, 16), num_masks=8)
        sensitivity.update(classifier, x, maps)
        assert all(math.isfinite(v) for v in sensitivity.compute().values())
        degradation = Degradation(tile_size=7)
        degradation.update(classifier, x, maps)
        assert math.isfinite(float(degradation.compute()["degradation"]))
        ratio = BoundingBoxRatio()
        ratio.update(maps, boxes)
        assert 0.0 <= float(ratio.compute()) <= 1.0
