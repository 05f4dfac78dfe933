"""Seed 001's experiment: rotating validation digits by 90 and 180 degrees raises the mean
epistemic uncertainty of MC dropout and the mean vacuity u = K/S of an evidential model."""

from __future__ import annotations

import pytest
import torch
from conftest import train_on_mnist5k

from uattr.bayes import model_uncertainties
from uattr.data import MNIST5k, Rotation
from uattr.lit import EvidentialClassifier
from uattr.models import LeNet5


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
        module, _ = train_on_mnist5k(  # exp evidence, as the config
            lambda: EvidentialClassifier(LeNet5(dropout=0.0), evidence="exp"), epochs
        )
    upright = _mean_uncertainty(module.posterior, validation_images, kind)
    for angle in (90, 180):
        rotated = _mean_uncertainty(module.posterior, Rotation(angle)(validation_images), kind)
        # The effect is large (rotated digits are far from the training data), not a coin flip.
        assert rotated > 1.3 * upright, (angle, rotated, upright)
