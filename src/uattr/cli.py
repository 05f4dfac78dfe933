"""A thin LightningCLI: subclass mode for model and data, the config saved into checkpoints."""

from __future__ import annotations

from typing import Any

import lightning.pytorch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from uattr.lit.checkpoint import CONFIG_KEY, instantiate_from_config
from uattr.lit.run_config import ConfigFileWithIncludes

__all__ = ["SaveConfigToCheckpoint", "UattrCLI", "instantiate_from_config"]


class SaveConfigToCheckpoint(SaveConfigCallback):
    """Writes ``config.yaml`` to the log dir (as Lightning does) and also stores the full config
    as a YAML string in every checkpoint, so ``evaluate.py`` can rebuild the run from the
    checkpoint alone (a plain string: safe for ``torch.load(weights_only=True)``)."""

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.parser.dump(self.config, skip_none=False)


class UattrCLI(LightningCLI):
    """``python train.py fit --config configs/<experiment>.yaml`` (also validate/test/predict)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", SaveConfigToCheckpoint)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(LightningModule, LightningDataModule, *args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """LightningCLI's parser, with a ``--config`` that applies a file's ``include:`` files
        first (:mod:`uattr.lit.run_config`)."""
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={lightning.pytorch.__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument("-c", "--config", action=ConfigFileWithIncludes,
                            help="Path to a configuration file in json or yaml format (its "
                                 "`include:` files apply first, see docs/configs.md).")
        return parser

