"""Safe checkpoint loading (``weights_only=True``) and rebuilding a run from its own checkpoint."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser

from uattr.lit.run_config import load_run_config

__all__ = [
    "CONFIG_KEY",
    "instantiate_from_config",
    "load_checkpoint",
    "rebuild_from_checkpoint",
    "saved_config",
]

#: where ``train.py`` (its ``SaveConfigToCheckpoint`` callback) stores the run's full YAML
#: configuration
CONFIG_KEY = "uattr_config"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU with ``torch.load(weights_only=True)``.

    Nothing in it is unpickled as an arbitrary object: only tensors and plain containers.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a PyTorch checkpoint, holds arbitrary Python objects, or is not
            a Lightning checkpoint (no ``state_dict``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # garbage bytes, not a refused object
            raise ValueError(
                f"{path} is not a PyTorch checkpoint (unreadable pickle data)."
            ) from error
        raise ValueError(
            f"{path} holds Python objects that a safe load (weights_only=True) refuses; uattr "
            f"only loads tensors and plain values. Details: {str(error).splitlines()[0]}"
        ) from error
    except Exception as error:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(
            f"{path} is not a PyTorch checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'unreadable'})."
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(
            f"{path} is a PyTorch file but not a Lightning checkpoint (it has no 'state_dict'); "
            "pass a .ckpt written by train.py."
        )
    return checkpoint


def saved_config(checkpoint: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """The full run configuration (``model``, ``data``, ``trainer``...) a checkpoint carries."""
    text = checkpoint.get(CONFIG_KEY)
    if text is None:
        raise ValueError(
            f"{path} carries no run configuration (it was not written by train.py); pass the "
            "run's YAML with --run_config."
        )
    return yaml.safe_load(text)


def instantiate_from_config(config: dict[str, Any]) -> tuple[LightningModule, LightningDataModule]:
    """Build the model and data module of a saved run configuration (no trainer, no loggers)."""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(LightningModule, "model", subclass_mode=True)
    parser.add_lightning_class_args(LightningDataModule, "data", subclass_mode=True)
    parsed = parser.parse_object({"model": config["model"], "data": config["data"]})
    init = parser.instantiate(parsed)
    return init.model, init.data


def rebuild_from_checkpoint(
    ckpt_path: str | Path, config_path: str | Path | None = None
) -> tuple[LightningModule, LightningDataModule, dict[str, Any]]:
    """(model with the checkpoint's weights, data module, config dict) of a saved run.

    The checkpoint is loaded with :func:`load_checkpoint` (``weights_only=True``); the run is
    rebuilt from ``config_path`` (a YAML file) if given, else from the configuration the
    checkpoint carries (:func:`saved_config`).

    Raises:
        FileNotFoundError: no checkpoint, or no file at ``config_path``.
        ValueError: see :func:`load_checkpoint` and :func:`saved_config`.
    """
    checkpoint = load_checkpoint(ckpt_path)
    if config_path is not None:
        config_path = Path(config_path)
        if not config_path.is_file():
            raise FileNotFoundError(f"no config file at {config_path}.")
        config = load_run_config(config_path)
    else:
        config = saved_config(checkpoint, ckpt_path)
    model, data = instantiate_from_config(config)
    model.load_state_dict(checkpoint["state_dict"])
    return model, data, config
