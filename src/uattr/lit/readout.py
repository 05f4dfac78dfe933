"""Training a Readout Bottleneck (Schulz et al., ICLR 2020) on a frozen classifier, and loading
one from its checkpoint."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from uattr.attribution.iba.readout import Readout, ReadoutBottleneck
from uattr.bayes.outputs import log_predictive, module_device
from uattr.common import check_images
from uattr.lit.checkpoint import rebuild_from_checkpoint
from uattr.lit.routine import _is_plain

__all__ = ["DEFAULT_CLASSIFIER", "ReadoutBottleneckModule", "load_classifier", "load_readout"]

#: the checkpoint ``python train.py fit --config configs/mnist5k_lenet_mcdropout.yaml`` writes
DEFAULT_CLASSIFIER = "checkpoints/mnist5k_lenet_mcdropout/last.ckpt"
_LENET_READOUTS = (
    "backbone.conv1", "backbone.conv2", "backbone.fc1", "backbone.fc2", "backbone.fc3"
)


def load_classifier(path: str | Path) -> tuple[nn.Module, tuple[int, int, int]]:
    """(posterior, image shape (C, H, W)) of a classifier checkpoint written by ``train.py``.

    The run is rebuilt from the configuration it carries
    (:func:`uattr.lit.checkpoint.rebuild_from_checkpoint`, ``weights_only=True``); the posterior is
    the module's ``.posterior`` (MCDropout, DeepEnsemble or Evidential) and the shape comes from
    its data module.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no classifier checkpoint at {path} (relative to {Path.cwd()}). Train the default "
            "first: `python train.py fit --config configs/mnist5k_lenet_mcdropout.yaml` writes "
            f"{DEFAULT_CLASSIFIER}; or pass --model.init_args.classifier=PATH."
        )
    module, data, _ = rebuild_from_checkpoint(path)
    if isinstance(module, ReadoutBottleneckModule):
        raise ValueError(f"{path} is a readout checkpoint; pass the classifier's checkpoint.")
    posterior = getattr(module, "posterior", None)
    if not isinstance(posterior, nn.Module):
        raise ValueError(
            f"{path} holds a {type(module).__name__} without a .posterior; pass a classifier "
            "checkpoint (BayesianClassifier, EvidentialClassifier)."
        )
    shape = (int(data.in_channels), int(data.image_size), int(data.image_size))
    return posterior, shape


def load_readout(path: str | Path, posterior: nn.Module) -> ReadoutBottleneck:
    """The maps of the readout checkpoint ``path``, checked to explain ``posterior``.

    The readout's run is rebuilt from the configuration it carries
    (:func:`uattr.lit.checkpoint.rebuild_from_checkpoint`, ``weights_only=True``). A readout
    checkpoint carries the weights of the classifier it was trained on; they must equal
    ``posterior``'s (:func:`uattr.attribution.iba.check_explains`), or its maps would explain
    another model. The readout is moved to ``posterior``'s device.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``path`` is not a readout checkpoint, or was trained on another classifier.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no readout checkpoint at {path} (--readout). Train one on this classifier first: "
            "`python train.py fit --config configs/mnist5k_readout.yaml` writes "
            "checkpoints/mnist5k_readout/last.ckpt (another classifier: "
            "--model.init_args.classifier=PATH)."
        )
    module, _, _ = rebuild_from_checkpoint(path)
    readout = getattr(module, "readout", None)
    if not isinstance(readout, Readout):
        raise ValueError(
            f"{path} is a checkpoint of {type(module).__name__}, not of a readout bottleneck; "
            "train one with `python train.py fit --config configs/mnist5k_readout.yaml`."
        )
    try:
        method = ReadoutBottleneck(posterior, readout.eval())
    except ValueError as error:
        raise ValueError(f"--readout {path}: {error}") from error
    readout.to(module_device(posterior))
    return method


class ReadoutBottleneckModule(LightningModule):
    """Trains the readout network of a Readout Bottleneck on a frozen classifier.

    Loss (per batch): ``CE + beta * mean capacity`` with CE = ``-log p(y | Z)`` of the posterior
    predictive with the bottleneck inserted (mean over the batch; y the labels, as the library's
    training notebook intends) and the capacity in nats averaged over images and elements. Only the
    readout network trains: the classifier's parameters are frozen (``requires_grad=False``), never
    given to the optimiser, and the classifier stays in eval mode even while the module trains, so
    its weights and buffers are bit-identical before and after. The feature statistics are estimated
    at the start of ``fit`` (unless already present, e.g. when resuming) from the first
    ``estimator_samples`` images of the data module's train split, and saved in checkpoints.

    Logged: ``train/loss``, ``train/ce``, ``train/capacity_bits`` (mean per element); the same for
    ``val``/``test`` plus ``acc`` (accuracy of the bottlenecked posterior). Validation/test noise is
    seeded per batch, so those numbers are reproducible.

    Args:
        classifier: the path of a classifier checkpoint written by ``train.py`` (default: the
            embedded default's ``checkpoints/mnist5k_lenet_mcdropout/last.ckpt``), or a posterior
            module (then give ``input_shape``; it is frozen in place).
        layer: the bottleneck layer, a dotted name in the posterior (``backbone.conv2``: LeNet5's
            second conv, 16 x 10 x 10, pre-ReLU like the paper's VGG-16 conv4_1).
        readout_layers: the layers read; default all of LeNet5's conv/fc layers up to the logits
            (the paper reads four conv stages and the logits).
        input_shape: (C, H, W); taken from the checkpoint's data module when ``None``.
        beta: weight of the mean capacity (10, library and paper).
        sigma: Gaussian smoothing of lambda (1).
        min_std: floor of the feature std (0.01).
        estimator_samples: images for the feature statistics (1000, ours; library 10,000).
        optimizer: ``params -> Optimizer`` for the readout's parameters. The CLI config uses Adam
            lr 1e-3 (ours: the library trains ImageNet for 10 epochs at lr 1e-5, ~400k steps;
            mnist5k has 63 steps per epoch).
    """

    def __init__(
        self,
        classifier: str | nn.Module = DEFAULT_CLASSIFIER,
        layer: str = "backbone.conv2",
        readout_layers: Sequence[str] = _LENET_READOUTS,
        input_shape: Sequence[int] | None = None,
        beta: float = 10.0,
        sigma: float = 1.0,
        min_std: float = 0.01,
        estimator_samples: int = 1000,
        optimizer: OptimizerCallable = torch.optim.Adam,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["classifier"] if isinstance(classifier, nn.Module) else None
        )
        if isinstance(classifier, str | Path):
            posterior, shape = load_classifier(classifier)
            input_shape = shape if input_shape is None else input_shape
        elif isinstance(classifier, nn.Module):
            posterior = classifier
            if input_shape is None:
                raise ValueError(
                    "give input_shape=(channels, H, W) when the classifier is a module (a "
                    "checkpoint path provides it)."
                )
        else:
            raise TypeError(
                f"classifier must be a checkpoint path or an nn.Module, got {type(classifier)}."
            )
        if not math.isfinite(beta) or beta < 0:
            raise ValueError(f"beta must be a finite number >= 0, got {beta}.")
        if isinstance(estimator_samples, bool) or not isinstance(estimator_samples, int) or (
            estimator_samples < 2
        ):
            raise ValueError(f"estimator_samples must be an int >= 2, got {estimator_samples!r}.")
        posterior.requires_grad_(False)
        posterior.eval()
        self.readout = Readout(posterior, layer, readout_layers, input_shape, sigma, min_std)
        self.beta = float(beta)
        self.estimator_samples = estimator_samples
        self.optimizer_factory = optimizer
        self.in_channels = int(input_shape[0])

    @property
    def posterior(self) -> nn.Module:
        """The frozen classifier the readout explains."""
        return self.readout.model

    def train(self, mode: bool = True) -> ReadoutBottleneckModule:
        super().train(mode)
        self.readout.model.eval()  # frozen: dropout off, BatchNorm statistics fixed
        return self

    def configure_optimizers(self) -> Any:
        return self.optimizer_factory(self.readout.net.parameters())

    def on_fit_start(self) -> None:
        if bool(self.readout.estimated):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise RuntimeError(
                "ReadoutBottleneckModule estimates its feature statistics from the data module's "
                "train split at the start of fit; fit with a datamodule, or call "
                "module.readout.estimate(images_or_loader) first."
            )
        self.readout.estimate(datamodule, self.estimator_samples)

    def _step(self, batch: Any, stage: str, generator: torch.Generator | None) -> torch.Tensor:
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            raise ValueError(
                "expected batches (images [B, C, H, W], labels [B]) from the data module."
            )
        x, y = batch[0], batch[1]
        check_images(x, channels=self.in_channels, name="batch images")
        out, cap = self.readout.restricted_forward(x, generator)
        log_p = log_predictive(self.posterior, out)
        ce = F.nll_loss(log_p, y)
        information = cap.mean()
        loss = ce + self.beta * information
        evaluating = stage != "train"
        logs = {"loss": loss, "ce": ce, "capacity_bits": information / math.log(2)}
        if evaluating:
            logs["acc"] = (log_p.argmax(-1) == y).float().mean()
        for name, value in logs.items():
            self.log(f"{stage}/{name}", value, on_step=not evaluating, on_epoch=True,
                     prog_bar=name == "loss", batch_size=len(y), sync_dist=evaluating)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", None)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", torch.Generator().manual_seed(batch_idx))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", torch.Generator().manual_seed(batch_idx))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints must load with torch.load(weights_only=True): under the CLI the hparams are
        # plain values; a classifier module or optimizer callable given in Python is not.
        hparams = checkpoint.get("hyper_parameters", {})
        dropped = [k for k, v in hparams.items() if not _is_plain(v)]
        if dropped:
            rank_zero_warn(
                f"not saving hyper-parameters {dropped} in the checkpoint: they are Python objects "
                "that torch.load(weights_only=True) refuses. Train through the CLI (train.py) to "
                "store the full configuration."
            )
            for key in dropped:
                hparams.pop(key)
