"""2-process CPU DDP: the callbacks log the numbers of one process on the same probe."""

from __future__ import annotations

import csv
import math

import pytest
import yaml
from conftest import ROOT, run_train_py

from uattr.cli import UattrCLI

DEFAULT = ROOT / "configs" / "mnist5k_lenet_mcdropout.yaml"
DDP = ROOT / "configs" / "trainer" / "ddp_cpu.yaml"

# Small probes whose sizes divide by 2 processes; all three default methods, so the random map's
# per-item seeding and UA-Backprop's batched backward are both covered.
CALLBACKS = {
    "trainer": {
        "callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": "checkpoints", "save_last": True},
            },
            {
                "class_path": "uattr.callbacks.AttributionMetrics",
                "init_args": {
                    "methods": ["ua_backprop", "gradient", "random"],
                    "every_n_epochs": 1,
                    "probe_size": 8,
                },
            },
            {
                "class_path": "uattr.callbacks.UncertaintyMetrics",
                "init_args": {"probe_size": 16, "rotation_angles": [0, 90], "every_n_epochs": 1},
            },
            {
                "class_path": "uattr.callbacks.AttributionImages",
                "init_args": {"methods": ["gradient"], "num_images": 2, "every_n_epochs": 1},
            },
        ]
    }
}
FAST = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=6",
    "--trainer.limit_val_batches=2",
    "--model.init_args.num_samples=4",
]


def _last_logged(csv_path) -> dict[str, float]:
    last: dict[str, float] = {}
    with open(csv_path) as handle:
        for row in csv.DictReader(handle):
            last.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return last


def test_ddp_fit_logs_the_same_callback_metrics_as_one_process(tmp_path, monkeypatch):
    overlay = tmp_path / "callbacks.yaml"
    overlay.write_text(yaml.safe_dump(CALLBACKS))
    run_train_py(
        ["fit", "--config", str(DEFAULT), "--config", str(DDP), "--config", str(overlay), *FAST],
        cwd=tmp_path,
    )
    (metrics_csv,) = (tmp_path / "logs" / "mnist5k_lenet_mcdropout" / "csv").glob(
        "version_*/metrics.csv"
    )
    ddp = {
        k: v
        for k, v in _last_logged(metrics_csv).items()
        if "/attr/" in k or "/ood/" in k or "/rotation/" in k
    }
    # rank zero alone wrote the image grid, into the first logger's (TensorBoard's) run directory
    pngs = list((tmp_path / "logs").rglob("attributions/val/epoch_000.png"))
    assert len(pngs) == 1

    monkeypatch.chdir(tmp_path)
    cli = UattrCLI(
        args=[
            "validate",
            "--config",
            str(DEFAULT),
            "--config",
            str(overlay),
            *FAST,
            "--ckpt_path",
            str(tmp_path / "checkpoints" / "last.ckpt"),
            "--trainer.logger=false",
        ]
    )
    single = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k in ddp}

    methods = ("ua_backprop", "gradient", "random")
    expected = {
        f"val/attr/{m}/{k}"
        for m in methods
        for k in ("murr@2%", "auc_urr@2%", "murr_step@5%", "iou", "ada", "pointing_game")
    }
    expected |= {
        f"val/ood/{kind}/{k}"
        for kind in ("total", "aleatoric", "epistemic")
        for k in ("auroc", "aupr_in", "aupr_out", "fpr@95tpr", "detection_acc")
    }
    expected |= {"val/rotation/epistemic@90"}
    assert expected <= set(ddp)
    assert set(single) == set(ddp)
    for key, value in ddp.items():
        assert math.isfinite(value), key
        assert value == pytest.approx(single[key], abs=1e-5), key
