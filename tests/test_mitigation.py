"""AttentionMitigation: A = (1 - M) M, modes, identical attention in every loop, resume, DDP."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, run_train_py
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from uattr.attribution.registry import build_method
from uattr.callbacks.attention import AttentionMitigation, attend, attention_mask, unit_maps
from uattr.cli import UattrCLI
from uattr.data import MNIST5k
from uattr.lit import BayesianClassifier, load_checkpoint
from uattr.models import LeNet5

MITIGATION = ROOT / "configs" / "mnist5k_lenet_mcdropout_mitigation.yaml"
DDP = ROOT / "configs" / "trainer" / "ddp_cpu.yaml"
#: where the mitigation configs' init_from looks, relative to the run folder
STARTING = Path("checkpoints") / "mnist5k_lenet_mcdropout" / "last.ckpt"


def write_starting_checkpoint(path: Path, seed: int = 123) -> Path:
    """An (untrained) embedded-default model as a checkpoint that ``init_from`` accepts.

    Seeded differently from the runs below (seed_everything(0)), so a run that ignored it, or a
    frozen attention model rebuilt from a fresh initialisation, would be caught.
    """
    torch.manual_seed(seed)
    module = BayesianClassifier(LeNet5(dropout=0.25))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict()}, path)
    return path


def _images(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    data = MNIST5k(batch_size=n, seed=seed)
    data.setup("fit")
    x, y = next(iter(data.val_dataloader()))
    return x, y


# ---- the attention itself ---------------------------------------------------------------------
def test_attention_is_in_0_quarter_and_peaks_where_m_is_half():
    ramp = torch.linspace(-3.0, 5.0, 101).view(1, 1, 101)  # M = 0, 0.01, ..., 1 along the row
    maps = torch.cat([ramp, 7 * ramp + 2])  # a positive affine change of a map leaves M unchanged
    a = attention_mask(maps)
    assert torch.allclose(a[0], a[1], atol=1e-6)
    assert a.min() >= 0 and a.max() <= 0.25
    m = unit_maps(maps)[0, 0]
    assert m[0] == 0 and m[-1] == 1
    assert a[0, 0, 0] == 0 and a[0, 0, -1] == 0  # no attribution and the most uncertain pixel
    assert int(a[0, 0].argmax()) == 50 and float(a[0, 0, 50]) == pytest.approx(0.25)  # M = 0.5
    assert torch.allclose(a[0, 0], (1 - m) * m)


def test_attend_options_and_flat_maps():
    x, _ = _images(2)
    maps = torch.rand(2, 28, 28)
    scaled = attend(x, maps, "scale")
    a = attention_mask(maps)
    assert torch.allclose(scaled, x * (a / a.flatten(1).max(1).values.view(-1, 1, 1)).unsqueeze(1))
    assert scaled.min() >= 0 and scaled.max() <= 1
    assert torch.allclose(attend(x, maps, "raw"), x * a.unsqueeze(1))
    assert torch.allclose(attend(x, maps, "suppress"), x * (1 - unit_maps(maps)).unsqueeze(1))
    # A constant map says nothing about where the uncertainty is: the image is left as it is.
    assert torch.equal(attend(x, torch.full((2, 28, 28), 0.3), "scale"), x)
    with pytest.raises(ValueError, match="apply must be one of"):
        attend(x, maps, "multiply")
    with pytest.raises(ValueError, match="maps must have shape"):
        attend(x, maps[:, :5], "scale")


# ---- the callback on its own -----------------------------------------------------------------
def _flags(module: torch.nn.Module) -> list[bool]:
    return [m.training for m in module.modules()]


@pytest.mark.parametrize("method", ["ua_backprop", "gradient"])
def test_callback_restores_modes_touches_no_gradient_and_attends_identically(method):
    torch.manual_seed(0)
    module = BayesianClassifier(LeNet5(dropout=0.25), num_samples=4)
    module.train()
    module.posterior.backbone.drop1.eval()  # a mixed pattern that module.train(flag) would lose
    flags = _flags(module)
    callback = AttentionMitigation(method)
    x, y = _images()
    expected = attend(x, build_method(method, module.posterior)(x, "total").abs())
    assert _flags(module) == flags

    seen = []
    hooks = [
        (callback.on_train_batch_start, torch.enable_grad),
        (callback.on_validation_batch_start, torch.no_grad),  # validation inside fit
        (callback.on_test_batch_start, torch.inference_mode),  # trainer.validate/test
        (callback.on_predict_batch_start, torch.inference_mode),
    ]
    for hook, context in hooks:
        with context():
            batch = [x.clone(), y]
            hook(None, module, batch, 0)
        assert _flags(module) == flags, hook.__name__
        assert not batch[0].requires_grad and batch[0].grad_fn is None  # a constant input
        seen.append(batch[0].clone())
    assert all(p.grad is None for p in module.parameters())
    for attended in seen:
        assert torch.equal(attended, seen[0])
    assert torch.allclose(seen[0], expected, atol=1e-6)
    assert not torch.allclose(seen[0], x)  # the attention did change the images

    # A tuple batch (no list to rebind) is attended in place.
    batch = (x.clone(), y)
    callback.on_train_batch_start(None, module, batch, 0)
    assert torch.equal(batch[0], seen[0])


def test_control_leaves_batches_alone_and_settings_are_checked(tmp_path):
    x, y = _images()
    module = BayesianClassifier(LeNet5(dropout=0.25), num_samples=4)
    batch = [x, y]
    AttentionMitigation(method=None).on_train_batch_start(None, module, batch, 0)
    assert batch[0] is x
    with pytest.raises(ValueError, match="unknown attribution method"):
        AttentionMitigation("ua-backprop")
    with pytest.raises(ValueError, match="apply must be one of"):
        AttentionMitigation(apply="multiply")
    with pytest.raises(ValueError, match="contrast_cam explains class scores only"):
        AttentionMitigation("contrast_cam")  # the attention is built from an uncertainty map
    with pytest.raises(ValueError, match="different settings"):
        AttentionMitigation("gradient").load_state_dict(AttentionMitigation().state_dict())
    # init_from must fit the model; it is loaded at the first setup only.
    start = write_starting_checkpoint(tmp_path / "start.ckpt")
    callback = AttentionMitigation(init_from=str(start))
    callback.setup(None, module, "fit")
    loaded = load_checkpoint(start)["state_dict"]
    assert all(torch.equal(v, loaded[k]) for k, v in module.state_dict().items())
    with torch.no_grad():
        module.posterior.backbone.fc3.bias.add_(1.0)  # "fine-tuned"
    callback.setup(None, module, "test")  # fit then test in one process: no reload
    bias = "posterior.backbone.fc3.bias"
    assert not torch.equal(module.state_dict()[bias], loaded[bias])
    with pytest.raises(FileNotFoundError, match="Train the starting model first"):
        AttentionMitigation(init_from=str(tmp_path / "missing.ckpt")).setup(None, module, "fit")
    wrong = BayesianClassifier(LeNet5(num_classes=3, dropout=0.25))
    with pytest.raises(ValueError, match="does not fit BayesianClassifier"):
        AttentionMitigation(init_from=str(start)).setup(None, wrong, "fit")


# ---- in Lightning loops -----------------------------------------------------------------------
class Recording(BayesianClassifier):
    """Keeps the images every step receives."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[str, list[torch.Tensor]] = {
            stage: [] for stage in ("train", "val", "test", "predict")
        }

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch[0].detach().clone())
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append(batch[0].clone())
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self.seen["test"].append(batch[0].clone())
        return super().test_step(batch, batch_idx)

    def predict_step(self, batch, batch_idx):
        self.seen["predict"].append(batch[0].clone())
        return super().predict_step(batch, batch_idx)


class SameImages(LightningDataModule):
    """The same 8 digits, in the same order, for every loop."""

    num_classes = 10

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__()
        self.data = TensorDataset(x, y)

    def _loader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=len(self.data), shuffle=False)

    train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _loader


def _frozen_weights(params):
    return torch.optim.SGD(params, lr=0.0)  # the model, hence its attention, stays as it is


def test_attention_is_applied_identically_in_train_val_test_and_predict():
    seed_everything(0)
    x, y = _images(8)
    module = Recording(LeNet5(dropout=0.25), num_samples=4, optimizer=_frozen_weights)
    expected = attend(x, build_method("ua_backprop", module.posterior)(x, "total").abs())
    trainer = Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, accelerator="cpu", devices=1, num_sanity_val_steps=1,
        callbacks=[AttentionMitigation("ua_backprop")],
    )
    data = SameImages(x, y)
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)  # inference_mode
    trainer.predict(module, datamodule=data)
    seen = module.seen
    # one batch each; validation twice (the sanity check, then the epoch)
    assert [len(seen[k]) for k in ("train", "val", "test", "predict")] == [1, 2, 1, 1]
    for stage, batches in seen.items():
        for images in batches:
            assert torch.allclose(images, expected, atol=1e-6), stage
    assert not torch.allclose(expected, x)


def _fine_tune(tmp_path: Path, max_epochs: int, start: Path | None, ckpt_path=None,
               attention_model="current", method="ua_backprop"):
    seed_everything(0)
    module = BayesianClassifier(LeNet5(dropout=0.25), num_samples=4,
                                optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    attention = AttentionMitigation(method, attention_model=attention_model,
                                    init_from=None if start is None else str(start))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = Trainer(
        max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[attention, checkpoint], accelerator="cpu", devices=1,
    )
    trainer.fit(module, datamodule=MNIST5k(batch_size=32, seed=0), ckpt_path=ckpt_path)
    return module, tmp_path / "last.ckpt"


@pytest.mark.parametrize("attention_model", ["current", "frozen"])
def test_resumed_fine_tuning_ends_with_the_uninterrupted_weights(tmp_path, attention_model):
    # Gradient maps keep it fast; what is tested (weights, callback state, RNG) is the same for all.
    start = write_starting_checkpoint(tmp_path / "start.ckpt")
    kw = {"attention_model": attention_model, "method": "gradient"}
    straight, _ = _fine_tune(tmp_path / "straight", 2, start, **kw)
    _, epoch1 = _fine_tune(tmp_path / "first", 1, start, **kw)
    # The frozen case resumes without init_from: its attention model must come from the checkpoint.
    resume_start = start if attention_model == "current" else None
    resumed, _ = _fine_tune(tmp_path / "resumed", 2, resume_start, ckpt_path=epoch1, **kw)
    a, b = straight.state_dict(), resumed.state_dict()
    trained = [k for k in a if a[k].is_floating_point()]
    assert trained and a.keys() == b.keys()
    for key in trained:
        assert torch.equal(a[key], b[key]), key
    # ...and epoch 2 changed the weights, which started from init_from, not the module's own init.
    first = load_checkpoint(epoch1)["state_dict"]
    assert any(not torch.equal(first[k], a[k]) for k in trained)
    initial = load_checkpoint(start)["state_dict"]
    assert max((first[k] - initial[k]).abs().max() for k in trained) < 0.1
    if attention_model == "frozen":
        # validate/test with --ckpt_path restore no callback state: setup takes the frozen model
        # from the checkpoint, so evaluation attends as training did.
        callback = AttentionMitigation("gradient", attention_model="frozen")
        callback.setup(SimpleNamespace(ckpt_path=str(epoch1)), resumed, "test")
        frozen = callback._frozen.state_dict()
        assert all(torch.equal(frozen[k], initial[f"posterior.{k}"]) for k in frozen)


# ---- the CLI config under 2-process DDP -------------------------------------------------------
def _last_logged(csv_path: Path, key: str) -> float:
    with open(csv_path) as handle:
        return float([row[key] for row in csv.DictReader(handle) if row.get(key)][-1])


def test_mitigation_config_runs_under_ddp_and_matches_one_process(tmp_path, monkeypatch):
    write_starting_checkpoint(tmp_path / STARTING)
    small = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
             "--data.init_args.batch_size=16"]
    run_train_py(["fit", "--config", str(MITIGATION), "--config", str(DDP),
                  "--trainer.limit_val_batches=1", *small], cwd=tmp_path)
    ckpt = tmp_path / "checkpoints" / "mnist5k_lenet_mcdropout_mitigation" / "last.ckpt"
    state = load_checkpoint(ckpt)["callbacks"]
    (attention,) = [v for k, v in state.items() if k.startswith("AttentionMitigation")]
    assert attention["settings"]["method"] == "ua_backprop"
    (metrics_csv,) = (tmp_path / "logs" / "mnist5k_lenet_mcdropout_mitigation" / "csv").glob(
        "version_*/metrics.csv")
    ddp = {key: _last_logged(metrics_csv, key) for key in ("val/acc", "val/nll")}

    # One process, the same weights and the same 32 validation digits (2 ranks x 1 batch of 16,
    # interleaved by the DistributedSampler = the first 2 batches of 16), attended again.
    monkeypatch.chdir(tmp_path)
    cli = UattrCLI(args=["validate", "--config", str(MITIGATION), "--ckpt_path", str(ckpt),
                         "--trainer.logger=false", "--trainer.limit_val_batches=2", *small])
    for key in ddp:
        assert ddp[key] == pytest.approx(float(cli.trainer.callback_metrics[key]), abs=1e-6), key
