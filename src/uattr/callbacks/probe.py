"""The fixed, seeded probe subset that validation-time callbacks work on, and their shared plumbing.

Attributing a whole validation set every epoch is far too slow, so the callbacks draw a *probe*:
``probe_size`` items of the validation (or test) set, chosen once by a seeded permutation, kept on
the CPU and reused every epoch, so numbers and heat maps are comparable across epochs. Under DDP
rank r takes the items ``r::world_size`` of the probe, so the union over ranks is exactly the
single-process probe.

:class:`ProbeCallback` is the base of the uattr callbacks: it decides when to run (every N
validation epochs in ``fit``, skipping the sanity check; always in ``trainer.validate`` and
``trainer.test``), finds the split's dataset, builds and caches the probe, and runs the work with
gradients possible (``torch.inference_mode(False)``: ``trainer.validate``/``test`` run under
inference mode) and every submodule's train/eval flag restored afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.data import Dataset

from uattr.attribution.iba.readout import Readout
from uattr.attribution.registry import METHODS, build_method
from uattr.bayes.posterior import model_uncertainties
from uattr.common import check_positive_int
from uattr.lit.readout import load_readout
from uattr.modes import evaluating, preserved_modes

__all__ = [
    "DEFAULT_CHUNK",
    "Probe",
    "ProbeCallback",
    "Stage",
    "build_callback_methods",
    "build_probe",
    "posterior_of",
    "probe_indices",
    "probe_uncertainties",
    "stage_dataset",
]

Stage = Literal["val", "test"]


@dataclass(frozen=True)
class Probe:
    """A fixed set of dataset items: ``images`` float [P, C, H, W] in [0, 1], ``labels`` long [P],
    and ``indices`` long [P], their indices in the dataset (which seed per-item perturbations such
    as :class:`~uattr.data.AnomalyPatch`, so an item is perturbed alike on every rank)."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, key: slice | torch.Tensor) -> Probe:
        return Probe(self.images[key], self.labels[key], self.indices[key])

    def shard(self, rank: int, world_size: int) -> Probe:
        """Items ``rank::world_size``: this rank's share under DDP."""
        return self[slice(rank, None, world_size)]

    def to(self, device: torch.device | str) -> Probe:
        return Probe(self.images.to(device), self.labels.to(device), self.indices.to(device))


def probe_indices(num_items: int, size: int, seed: int) -> torch.Tensor:
    """The first ``min(size, num_items)`` entries of a seeded random permutation of the dataset.

    Depends only on ``(num_items, seed)`` (a private CPU generator: the global RNG is untouched),
    and a smaller ``size`` gives a prefix of a larger one.
    """
    if num_items < 1:
        raise ValueError("the dataset is empty: there is nothing to probe.")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_items, generator=generator)[: min(size, num_items)]


def build_probe(dataset: Dataset, size: int, seed: int, world_size: int = 1) -> Probe:
    """Draw the probe of ``dataset`` (items ``(image [C, H, W], label, ...)``) on the CPU.

    ``size`` is capped by the dataset length, then rounded down to a multiple of ``world_size``
    (with a warning) so every DDP rank holds the same number of items.
    """
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(
            f"the probe needs a map-style dataset (with __len__ and __getitem__), got "
            f"{type(dataset).__name__}."
        )
    indices = probe_indices(len(dataset), size, seed)
    usable = len(indices) - len(indices) % world_size
    if usable < world_size:
        raise ValueError(
            f"a probe of {len(indices)} item(s) cannot be shared by {world_size} processes: "
            f"use probe_size >= {world_size}."
        )
    if usable != len(indices):
        rank_zero_warn(
            f"probe of {len(indices)} items rounded down to {usable}, a multiple of the "
            f"{world_size} processes; the numbers equal a single-process run with "
            f"probe_size={usable}."
        )
        indices = indices[:usable]
    images, labels = [], []
    for i in indices.tolist():
        item = dataset[i]
        if not isinstance(item, list | tuple) or len(item) < 2:
            raise ValueError(
                f"dataset items must be (image [C, H, W], label, ...), got {type(item).__name__}."
            )
        images.append(torch.as_tensor(item[0]))
        labels.append(int(item[1]))
    images_t = torch.stack(images)
    if images_t.dim() != 4 or not images_t.is_floating_point():
        raise ValueError(
            f"probe images must be float [C, H, W] in [0, 1]; got a stack of shape "
            f"{tuple(images_t.shape)} and dtype {images_t.dtype}."
        )
    return Probe(images_t.float().contiguous(), torch.tensor(labels, dtype=torch.long), indices)


def stage_dataset(trainer: Trainer, stage: Stage) -> Dataset:
    """The dataset of the trainer's first validation (``"val"``) or test (``"test"``) loader."""
    loaders: Any = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
    if isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    if isinstance(loaders, list | tuple):
        loaders = loaders[0] if loaders else None
    dataset = getattr(loaders, "dataset", None)
    if dataset is None:
        datamodule = getattr(trainer, "datamodule", None)
        dataset = getattr(datamodule, "val_dataset" if stage == "val" else "test_dataset", None)
    if dataset is None:
        raise RuntimeError(
            f"cannot find the {stage} dataset to draw the probe from: the trainer has no "
            f"{stage} DataLoader with a .dataset."
        )
    return dataset


def posterior_of(pl_module: LightningModule) -> nn.Module:
    """``pl_module.posterior``, the model the callbacks explain (never a DDP wrapper)."""
    posterior = getattr(pl_module, "posterior", None)
    if not isinstance(posterior, nn.Module):
        raise TypeError(
            f"{type(pl_module).__name__} has no .posterior module to explain; the uattr callbacks "
            "need a BayesianClassifier, an EvidentialClassifier or a module with a .posterior "
            "(MCDropout, DeepEnsemble, Evidential or a plain classifier)."
        )
    return posterior


def _readout(value: Any, pl_module: LightningModule, posterior: nn.Module, name: str) -> Readout:
    """The trained :class:`Readout` a method's ``readout`` kwarg names (a checkpoint path or a
    module), or else the one ``pl_module`` trains (a ``ReadoutBottleneckModule``)."""
    if value is None and (value := getattr(pl_module, "readout", None)) is None:
        raise ValueError(
            f"{name!r} needs a trained readout: give method_kwargs={{{name!r}: {{'readout': "
            "<readout checkpoint>}}}, or attach the callback to a ReadoutBottleneckModule."
        )
    if isinstance(value, str | os.PathLike):
        return load_readout(value, posterior).readout
    return value


def build_callback_methods(
    names: Sequence[str], pl_module: LightningModule, method_kwargs: dict[str, dict[str, Any]]
) -> dict[str, Callable[[torch.Tensor, Any], torch.Tensor]]:
    """The attribution methods a callback runs, ``{name: method(x, target) -> maps}``.

    Each is built on :func:`posterior_of` ``(pl_module)`` by
    :func:`~uattr.attribution.registry.build_method` with ``method_kwargs[name]``. A method that
    requires a trained ``readout`` (``"readout"``) gets it from its ``readout`` kwarg, the path of
    a readout checkpoint (:func:`uattr.lit.readout.load_readout`: it must have been trained on the
    classifier explained), or else from ``pl_module.readout`` (a ``ReadoutBottleneckModule`` being
    trained). A method that explains class scores only with a map that does not depend on the
    class (``class_dependent`` false) runs without a target, so it serves an uncertainty callback.
    """
    posterior = posterior_of(pl_module)
    methods: dict[str, Callable[[torch.Tensor, Any], torch.Tensor]] = {}
    for name in names:
        cls = METHODS[name]
        kwargs = dict(method_kwargs.get(name, {}))
        if "readout" in cls.required_kwargs:
            kwargs["readout"] = _readout(kwargs.get("readout"), pl_module, posterior, name)
        method = build_method(name, posterior, **kwargs)
        if not cls.class_dependent and not cls.explains_uncertainty:
            methods[name] = lambda x, target, method=method: method(x, None)
        else:
            methods[name] = method
    return methods


class ProbeCallback(Callback):
    """Base class: runs :meth:`run` on validation/test epoch end, on a cached probe.

    Subclasses implement ``run(trainer, pl_module, stage) -> dict[str, float]``; the returned
    scalars are logged with ``pl_module.log`` (identical on every rank, so ``sync_dist`` is a
    no-op average that silences Lightning's distributed-logging warning). ``run`` is called inside
    ``torch.inference_mode(False)`` and :func:`uattr.modes.preserved_modes`; the logging happens
    outside it, because Lightning's result tensors may be inference tensors.

    Args:
        every_n_epochs: in ``fit``, run after validation epochs e with (e + 1) % N == 0 (as
            Lightning's ``check_val_every_n_epoch``), so a run of a multiple of N epochs ends
            with one; ``trainer.validate``/``test`` always run; the sanity check never does.
        probe_size: items drawn from the split (capped by its length; rounded down to a multiple
            of the world size under DDP).
        probe_seed: seeds the draw.
    """

    def __init__(self, every_n_epochs: int, probe_size: int, probe_seed: int) -> None:
        super().__init__()
        self.every_n_epochs = check_positive_int(every_n_epochs, "every_n_epochs")
        self.probe_size = check_positive_int(probe_size, "probe_size")
        self.probe_seed = check_positive_int(probe_seed, "probe_seed", minimum=0)
        #: how many times :meth:`run` has been called (on this rank)
        self.num_runs = 0
        self._probes: dict[tuple[str, int, int], Probe] = {}

    def should_run(self, trainer: Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn == TrainerFn.FITTING:
            return (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return True

    def probe(self, trainer: Trainer, stage: Stage, world_size: int | None = None) -> Probe:
        """The full (all ranks') probe of ``stage``; built once per dataset and cached (CPU)."""
        dataset = stage_dataset(trainer, stage)
        world_size = trainer.world_size if world_size is None else world_size
        key = (stage, id(dataset), world_size)
        if key not in self._probes:
            with torch.inference_mode(False):
                self._probes[key] = build_probe(
                    dataset, self.probe_size, self.probe_seed, world_size
                )
        return self._probes[key]

    def run(self, trainer: Trainer, pl_module: LightningModule, stage: Stage) -> dict[str, float]:
        raise NotImplementedError

    def _maybe_run(self, trainer: Trainer, pl_module: LightningModule, stage: Stage) -> None:
        if not self.should_run(trainer):
            return
        with torch.inference_mode(False), preserved_modes(pl_module):
            logs = self.run(trainer, pl_module, stage)
        self.num_runs += 1
        for name, value in logs.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._maybe_run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._maybe_run(trainer, pl_module, "test")


#: images per model call in the callbacks' forwards. With S = 20 posterior samples, 32 images are
#: 640 rows per call, whose activations stay in a CPU's cache where 256 images (5120 rows) do not
#: (benchmarks/callbacks.py compares the two).
DEFAULT_CHUNK = 32


def probe_uncertainties(
    model: nn.Module, x: torch.Tensor, batch_size: int = DEFAULT_CHUNK
) -> dict[str, torch.Tensor]:
    """Every uncertainty of ``model`` at images ``x`` [N, C, H, W]: ``{kind: float64 [N]}`` (nats).

    :func:`uattr.bayes.posterior.model_uncertainties` in chunks of ``batch_size`` images, under
    ``no_grad`` with the model in eval mode (every flag restored afterwards).
    """
    parts: dict[str, list[torch.Tensor]] = {}
    with evaluating(model), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            u = model_uncertainties(model, x[start : start + batch_size])
            for kind, values in u._asdict().items():
                parts.setdefault(kind, []).append(values.detach().double())
    return {kind: torch.cat(values) for kind, values in parts.items()}
