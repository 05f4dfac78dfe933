"""Safe checkpoint loading (``weights_only=True``) and rebuilding a run from its own checkpoint."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = ["CONFIG_KEY", "load_checkpoint", "saved_config"]

#: where :class:`uattr.cli.SaveConfigToCheckpoint` stores the run's full YAML configuration
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
            "run's YAML with --config."
        )
    return yaml.safe_load(text)
