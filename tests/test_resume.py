"""Resume: stopping after epoch 1 and resuming from its checkpoint ends with the same weights."""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from uattr.data import MNIST5k
from uattr.lit import BayesianClassifier, EvidentialClassifier, load_checkpoint
from uattr.models import LeNet5


def _fit(module_cls, tmp_path, max_epochs: int, ckpt_path=None, **module_kwargs):
    seed_everything(0)
    module = module_cls(LeNet5(dropout=0.25), **module_kwargs)
    data = MNIST5k(batch_size=64, seed=0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = Trainer(
        max_epochs=max_epochs,
        limit_train_batches=6,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, tmp_path / "last.ckpt"


def _assert_resume_matches(module_cls, tmp_path, **kwargs):
    straight, _ = _fit(module_cls, tmp_path / "straight", 2, **kwargs)
    _, epoch1 = _fit(module_cls, tmp_path / "first", 1, **kwargs)
    resumed, _ = _fit(module_cls, tmp_path / "resumed", 2, ckpt_path=epoch1, **kwargs)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    trained = [k for k in a if a[k].is_floating_point()]
    assert trained, "no weights compared"
    for key in trained:
        assert torch.equal(a[key], b[key]), key
    # ...and the two runs did not merely stand still: epoch 2 changed the weights.
    first = load_checkpoint(epoch1)["state_dict"]
    assert any(not torch.equal(first[k], a[k]) for k in trained)


def test_resume_mc_dropout_matches_uninterrupted_run(tmp_path):
    _assert_resume_matches(BayesianClassifier, tmp_path, num_samples=4)


def test_resume_evidential_matches_uninterrupted_run(tmp_path):
    # epoch 1 has a non-zero KL annealing coefficient: current_epoch must be restored too
    _assert_resume_matches(EvidentialClassifier, tmp_path, annealing_step=1)
