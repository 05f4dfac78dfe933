"""Every shipped config runs (fast_dev_run), and the CLI prints its configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_train_py
from test_data_torchvision import write_cifar10

from uattr.cli import UattrCLI

EXPERIMENTS = sorted((ROOT / "configs").glob("*.yaml"))
OVERLAYS = sorted((ROOT / "configs" / "trainer").glob("*.yaml"))
DEFAULT_CKPT = "checkpoints/mnist5k_lenet_mcdropout/last.ckpt"


def test_configs_exist():
    names = {p.stem for p in EXPERIMENTS}
    assert {
        "mnist5k_lenet_mcdropout",
        "mnist5k_lenet_evidential",
        "mnist5k_lenet_ensemble",
        "cifar10_resnet18_mcdropout",
    } <= names
    assert (ROOT / "configs" / "trainer" / "ddp_cpu.yaml") in OVERLAYS


def _data_overrides(config: Path, tmp_path: Path) -> list[str]:
    """Configs that read torchvision files get tiny files in the real formats; configs that start
    from the default classifier's checkpoint (mitigation, readout) get a real one, from a short
    run of the default config in the same folder."""
    if DEFAULT_CKPT in config.read_text():
        run_train_py(
            [
                "fit",
                "--config",
                str(ROOT / "configs" / "mnist5k_lenet_mcdropout.yaml"),
                "--trainer.max_epochs=1",
                "--trainer.limit_train_batches=2",
                "--trainer.limit_val_batches=1",
            ],
            cwd=tmp_path,
        )
        assert (tmp_path / DEFAULT_CKPT).is_file()
        return ["--data.init_args.batch_size=8"]
    data = yaml.safe_load(config.read_text())["data"]["class_path"]
    if data.endswith("CIFAR10"):
        (tmp_path / "data").mkdir()
        write_cifar10(tmp_path / "data")
        return [
            "--data.init_args.verify_md5=false",
            "--data.init_args.val_size=10",
            "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=4",
        ]
    return []


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_config_runs_fast_dev_run(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = UattrCLI(
        args=[
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run=true",
            *_data_overrides(config, tmp_path),
        ]
    )
    trainer = cli.trainer
    assert trainer.state.finished
    assert trainer.global_step == 1
    metrics = trainer.callback_metrics
    if not hasattr(cli.model, "uncertainty_kinds"):  # the readout bottleneck: its own metrics
        assert {"train/loss", "val/loss", "val/acc", "val/capacity_bits"} <= set(metrics)
        return
    assert {"train/loss", "val/acc", "val/nll", "val/ece", "val/brier"} <= set(metrics)
    for kind in cli.model.uncertainty_kinds:
        value = float(metrics[f"val/uncertainty/{kind}"])
        assert value >= 0.0 and value == value  # finite, non-negative nats


def test_print_config_round_trips(tmp_path):
    config = ROOT / "configs" / "mnist5k_lenet_mcdropout.yaml"
    printed = run_train_py(["fit", "--config", str(config), "--print_config"], cwd=tmp_path).stdout
    parsed = yaml.safe_load(printed)
    assert parsed["model"]["class_path"] == "uattr.lit.BayesianClassifier"
    assert parsed["model"]["init_args"]["num_samples"] == 20
    assert parsed["data"]["class_path"] == "uattr.data.MNIST5k"
