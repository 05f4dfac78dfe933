"""Seed 001's experiment: rotating validation digits by 90 and 180 degrees raises the mean
epistemic uncertainty of MC dropout and the mean vacuity u = K/S of an evidential model."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from uattr.bayes import model_uncertainties
from uattr.data import MNIST5k, Rotation
from uattr.lit import EvidentialClassifier
from uattr.models import LeNet5


def _train(module, epochs: int):
    seed_everything(0)
    data = MNIST5k(batch_size=64, seed=0)
    trainer = Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, datamodule=data)
    return module.eval(), data


def _mean_uncertainty(posterior, images: torch.Tensor, kind: str) -> float:
    with torch.no_grad():
        return float(getattr(model_uncertainties(posterior, images), kind).mean())


@pytest.fixture(scope="module")
def validation_images():
    data = MNIST5k()
    data.setup("validate")
    return torch.stack([data.val_dataset[i][0] for i in range(len(data.val_dataset))])


@pytest.mark.parametrize(
    ("name", "kind", "epochs"),
    [("mc_dropout", "epistemic", 3), ("evidential", "vacuity", 4)],
)
def test_rotation_raises_model_uncertainty(name, kind, epochs, validation_images, request):
    if name == "mc_dropout":
        module, _ = request.getfixturevalue("trained_mc_dropout")  # LeNet-5, S = 20, 3 epochs
    else:
        module = EvidentialClassifier(LeNet5(dropout=0.0), evidence="exp")  # as the config
        module, _ = _train(module, epochs)
    upright = _mean_uncertainty(module.posterior, validation_images, kind)
    for angle in (90, 180):
        rotated = _mean_uncertainty(module.posterior, Rotation(angle)(validation_images), kind)
        # The effect is large (rotated digits are far from the training data), not a coin flip.
        assert rotated > 1.3 * upright, (angle, rotated, upright)
