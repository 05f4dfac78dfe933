"""The evaluation suite behind ``evaluate.py``: rebuild a run from its checkpoint, test it, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar

from uattr.cli import instantiate_from_config
from uattr.lit.checkpoint import load_checkpoint, saved_config

__all__ = ["evaluate_checkpoint", "rebuild_from_checkpoint"]


def rebuild_from_checkpoint(ckpt_path: str | Path, config_path: str | Path | None = None):
    """(model with the checkpoint's weights, data module, config dict) of a saved run."""
    checkpoint = load_checkpoint(ckpt_path)
    if config_path is not None:
        config = yaml.safe_load(Path(config_path).read_text())
    else:
        config = saved_config(checkpoint, ckpt_path)
    model, data = instantiate_from_config(config)
    model.load_state_dict(checkpoint["state_dict"])
    return model, data, config


def _markdown_table(rows: list[tuple[str, float]]) -> str:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in rows]
    return "\n".join(lines)


def evaluate_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    config_path: str | Path | None = None,
    accelerator: str = "auto",
) -> Path:
    """Evaluate ``ckpt_path`` on its test split; write ``metrics.json`` and ``report.md``.

    Returns the path of ``report.md``.
    """
    model, data, config = rebuild_from_checkpoint(ckpt_path, config_path)
    trainer = Trainer(
        accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
        callbacks=[RichProgressBar()],
    )
    results: dict[str, Any] = trainer.test(model, datamodule=data, verbose=False)[0]
    metrics = {name: float(value) for name, value in sorted(results.items())}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(
        {"checkpoint": str(ckpt_path), "test": metrics}, indent=2) + "\n")
    model_name = config["model"]["class_path"].rsplit(".", 1)[-1]
    data_name = config["data"]["class_path"].rsplit(".", 1)[-1]
    report = out_dir / "report.md"
    report.write_text(
        f"# Evaluation report\n\nCheckpoint: `{ckpt_path}`  \nModel: {model_name}; data: "
        f"{data_name} (test split)\n\n## Predictive quality and uncertainty (test split)\n\n"
        f"{_markdown_table(list(metrics.items()))}\n\nUncertainties are dataset means in nats.\n"
    )
    return report
