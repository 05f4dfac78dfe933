"""Shared fixtures: the repository root, a helper to run train.py in-process or as a subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def run_train_py(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python train.py <args>`` in ``cwd`` and fail with its output if it fails."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f"train.py {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def resolved_config(*args: str) -> dict:
    """The configuration ``train.py fit *args`` would run (includes applied, defaults filled),
    as ``--print_config`` prints it; parsed in-process, nothing instantiated."""
    from uattr.cli import UattrCLI

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as exit_:
        UattrCLI(args=["fit", *args, "--print_config"])
    assert exit_.value.code in (0, None), printed.getvalue()
    return yaml.safe_load(printed.getvalue())


@pytest.fixture(scope="session")
def trained_mc_dropout():
    """A LeNet-5 MC-dropout classifier (S = 20) trained 3 epochs on mnist5k (~97% accuracy),
    in eval mode, and its data module (set up). Shared by the tests that need a real model."""
    from uattr.lit import BayesianClassifier
    from uattr.models import LeNet5

    return train_on_mnist5k(lambda: BayesianClassifier(LeNet5(dropout=0.25), num_samples=20), 3)


def train_on_mnist5k(make_module, epochs: int):
    """Seed everything, build ``make_module()``, fit it ``epochs`` epochs on mnist5k (no
    validation, no logs); return (the module in eval mode, its data module, set up for test)."""
    from lightning.pytorch import Trainer, seed_everything

    from uattr.data import MNIST5k

    seed_everything(0)
    module = make_module()
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
    data.setup("test")
    return module.eval(), data


def scaled_lenet(seed: int = 0, scale: float = 3.0):
    """A random LeNet5 (dropout 0.3) in eval mode with its last layer scaled by ``scale``:
    predictions far from uniform, so uncertainties and their maps are well above rounding."""
    import torch

    from uattr.models import LeNet5

    torch.manual_seed(seed)
    net = LeNet5(dropout=0.3)
    with torch.no_grad():
        net.fc3.weight.mul_(scale)
        net.fc3.bias.mul_(scale)
    return net.eval()


def random_images(b: int = 3, seed: int = 1, size: int = 28):
    """``b`` seeded uniform one-channel images [b, 1, size, size]."""
    import torch

    return torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(seed))


def randomise_batchnorm(net, seed: int = 0) -> None:
    """Give every BatchNorm2d of ``net`` random running statistics and affine parameters."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
