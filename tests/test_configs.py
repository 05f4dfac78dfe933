"""Every shipped config runs (fast_dev_run) and composes from its overlays as documented
(``include:``, ``${config_name}``, ``callbacks+:``); the CLI prints its configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT, resolved_config, run_train_py
from test_data_torchvision import write_cifar10

from uattr.cli import UattrCLI
from uattr.lit import run_config

CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(CONFIGS.glob("*.yaml"))
OVERLAYS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent != CONFIGS)
DEFAULT_CKPT = "checkpoints/mnist5k_lenet_mcdropout/last.ckpt"


def test_configs_exist():
    names = {p.stem for p in EXPERIMENTS}
    assert {
        "mnist5k_lenet_mcdropout",
        "mnist5k_lenet_evidential",
        "mnist5k_lenet_ensemble",
        "cifar10_resnet18_mcdropout",
    } <= names
    overlays = {p.relative_to(CONFIGS).as_posix() for p in OVERLAYS}
    assert {"trainer/default.yaml", "trainer/ddp_cpu.yaml", "callbacks/probes.yaml"} <= overlays


def _data_overrides(config: Path, tmp_path: Path) -> list[str]:
    """Configs that read torchvision files get tiny files in the real formats; configs that start
    from the default classifier's checkpoint (mitigation, readout) get a real one, from a short
    run of the default config in the same folder."""
    resolved = resolved_config("--config", str(config))
    if DEFAULT_CKPT in yaml.safe_dump(resolved):
        run_train_py(
            [
                "fit",
                "--config",
                str(CONFIGS / "mnist5k_lenet_mcdropout.yaml"),
                "--trainer.max_epochs=1",
                "--trainer.limit_train_batches=2",
                "--trainer.limit_val_batches=1",
            ],
            cwd=tmp_path,
        )
        assert (tmp_path / DEFAULT_CKPT).is_file()
        return ["--data.init_args.batch_size=8"]
    if resolved["data"]["class_path"].endswith("CIFAR10"):
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
    config = CONFIGS / "mnist5k_lenet_mcdropout.yaml"
    printed = run_train_py(["fit", "--config", str(config), "--print_config"], cwd=tmp_path).stdout
    parsed = yaml.safe_load(printed)
    assert "include" not in parsed
    assert parsed["model"]["class_path"] == "uattr.lit.BayesianClassifier"
    assert parsed["model"]["init_args"]["num_samples"] == 20
    assert parsed["data"]["class_path"] == "uattr.data.MNIST5k"
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    assert resolved_config("--config", str(saved)) == parsed


# ---- composition ------------------------------------------------------------------------
def _callbacks(config: dict) -> dict[str, dict]:
    return {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args") or {}
            for c in config["trainer"]["callbacks"]}


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_each_experiment_logs_and_checkpoints_under_its_own_name(config):
    resolved = resolved_config("--config", str(config))
    name = config.stem
    assert resolved["seed_everything"] == 0
    assert [(lg["init_args"]["save_dir"], lg["init_args"]["name"])
            for lg in resolved["trainer"]["logger"]] == [
        ("logs", f"{name}/tensorboard"), ("logs", f"{name}/csv")]
    checkpoint = _callbacks(resolved)["ModelCheckpoint"]
    assert checkpoint["dirpath"] == f"checkpoints/{name}"
    assert checkpoint["save_last"] and checkpoint["filename"] == "best"
    assert "RichProgressBar" in _callbacks(resolved)
    # what the shared overlays hold is not repeated in the experiment
    text = config.read_text()
    assert "loggers." not in text and "seed_everything" not in text
    assert "trainer/default.yaml" in {p.relative_to(CONFIGS).as_posix()
                                      for p, _ in run_config.expand_includes(config)}


def test_the_probe_overlay_appends_to_the_default_callbacks():
    resolved = resolved_config("--config", str(CONFIGS / "mnist5k_lenet_mcdropout.yaml"))
    assert list(_callbacks(resolved)) == ["ModelCheckpoint", "RichProgressBar",
                                          "AttributionMetrics", "UncertaintyMetrics",
                                          "AttributionImages"]


def test_the_mitigation_control_differs_only_in_its_attention():
    runs = []
    for name in ("mnist5k_lenet_mcdropout_mitigation",
                 "mnist5k_lenet_mcdropout_mitigation_control"):
        resolved = resolved_config("--config", str(CONFIGS / f"{name}.yaml"))
        callbacks = resolved["trainer"]["callbacks"]
        (attention,) = [c for c in callbacks if c["class_path"].endswith("AttentionMitigation")]
        callbacks.remove(attention)
        runs.append((attention["init_args"], yaml.safe_dump(resolved).replace(name, "<run>")))
    (attention, text), (control_attention, control_text) = runs
    assert text == control_text
    assert attention["method"] == "ua_backprop" and control_attention["method"] is None
    assert attention["init_from"] == control_attention["init_from"] == DEFAULT_CKPT


def test_an_overlay_composes_on_top_of_an_experiment():
    default = resolved_config("--config", str(CONFIGS / "mnist5k_lenet_mcdropout.yaml"))
    ddp = resolved_config("--config", str(CONFIGS / "mnist5k_lenet_mcdropout.yaml"),
                          "--config", str(CONFIGS / "trainer" / "ddp_cpu.yaml"))
    assert (ddp["trainer"]["strategy"], ddp["trainer"]["devices"]) == ("ddp", 2)
    ddp["trainer"].update({k: default["trainer"][k] for k in ("accelerator", "devices",
                                                               "strategy")})
    assert ddp == default


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_load_run_config_matches_the_cli(config):
    """What code without the CLI reads (evaluate.py --run_config) is what the CLI runs."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningArgumentParser

    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(LightningModule, "model", subclass_mode=True)
    parser.add_lightning_class_args(LightningDataModule, "data", subclass_mode=True)

    def model_and_data(config: dict) -> dict:
        parsed = parser.parse_object({"model": config["model"], "data": config["data"]})
        return parser.dump(parsed, format="parser_mode")

    resolved = resolved_config("--config", str(config))
    loaded = run_config.load_run_config(config)
    assert model_and_data(loaded) == model_and_data(resolved)
    assert ([c["class_path"] for c in loaded["trainer"]["callbacks"]]
            == [c["class_path"] for c in resolved["trainer"]["callbacks"]])


# ---- the include mechanism on small files ------------------------------------------------
def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = """\
seed_everything: 3
trainer:
  max_epochs: 2
  devices: 1
  default_root_dir: out/${config_name}
  callbacks:
    - class_path: lightning.pytorch.callbacks.RichProgressBar
"""
RUN = """\
model:
  class_path: uattr.lit.BayesianClassifier
  init_args:
    backbone: {class_path: uattr.models.LeNet5}
data: {class_path: uattr.data.MNIST5k}
"""


def test_includes_apply_first_in_order_relative_to_the_including_file(tmp_path):
    _write(tmp_path / "parts" / "base.yaml", BASE)
    _write(tmp_path / "parts" / "more.yaml", "include: base.yaml\ntrainer: {max_epochs: 4}\n")
    experiment = _write(tmp_path / "my_run.yaml", "include: [parts/more.yaml]\n"
                        "trainer:\n  max_epochs: 5\n  callbacks+:\n"
                        "    - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n"
                        + RUN)
    resolved = resolved_config("--config", str(experiment))
    assert resolved["seed_everything"] == 3
    assert (resolved["trainer"]["max_epochs"], resolved["trainer"]["devices"]) == (5, 1)
    assert resolved["trainer"]["default_root_dir"] == "out/my_run"  # the --config file's name
    assert list(_callbacks(resolved)) == ["RichProgressBar", "LearningRateMonitor"]
    assert [p.name for p, _ in run_config.expand_includes(experiment)] == ["base.yaml", "more.yaml",
                                                                "my_run.yaml"]
    # later files and flags still override; a file without includes is read as before
    again = resolved_config("--config", str(experiment), "--trainer.max_epochs=7",
                            "--config", str(_write(tmp_path / "x.yaml", "seed_everything: 9\n")))
    assert (again["trainer"]["max_epochs"], again["seed_everything"]) == (7, 9)


@pytest.mark.parametrize(("files", "message"), [
    ({"a.yaml": "include: b.yaml\n", "b.yaml": "include: a.yaml\n"}, "cycle"),
    ({"a.yaml": "include: [missing.yaml]\n"}, "no config file at"),
    ({"a.yaml": "include: {trainer: 1}\n"}, "must be a path or a list of paths"),
])
def test_bad_includes_fail_with_a_message(tmp_path, capsys, files, message):
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(ValueError, match=message):
        run_config.expand_includes(tmp_path / "a.yaml")
    with pytest.raises(SystemExit):
        UattrCLI(args=["fit", "--config", str(tmp_path / "a.yaml"), "--print_config"])
    assert message in capsys.readouterr().err
