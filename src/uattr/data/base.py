"""The common LightningDataModule contract of uattr and an in-memory image dataset.

Every data module exposes ``num_classes``, ``in_channels`` and ``image_size`` as class attributes
(readable before ``setup``, so the CLI can link them into the model), and yields items
``(image float32 [C, H, W] in [0, 1], label int64)``; with an :class:`~uattr.data.AnomalyPatch`
perturbation the val/test items are ``(image, label, box [4])``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from uattr.data.perturbations import Perturbation, PerturbedDataset

__all__ = ["ImageDataModule", "ImageTensorDataset"]


class ImageTensorDataset(Dataset):
    """Images held in memory, converted to float in [0, 1] one item at a time.

    Args:
        images: ``[N, C, H, W]``, either uint8 in 0..255 (divided by 255 on access, as torchvision's
            ``ToTensor``) or float already in [0, 1]. Kept as given, so uint8 data stays 4x smaller.
        labels: ``[N]`` class indices.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
            raise ValueError(
                f"expected images [N, C, H, W] and labels [N], got {tuple(images.shape)} and "
                f"{tuple(labels.shape)}."
            )
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise TypeError(f"images must be uint8 or float, got {images.dtype}.")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if image.dtype == torch.uint8:
            image = image.float().div_(255)
        else:
            image = image.float()
        return image, self.labels[index]


class ImageDataModule(LightningDataModule):
    """Base data module: seeded shuffling, loaders, and val/test perturbations.

    Subclasses set the class attributes and implement :meth:`_build_datasets`.

    ``setup`` builds all three splits on its first call (whatever the stage) and returns at once on
    later calls, so it is idempotent and cheap to repeat. The train loader shuffles with a
    ``torch.Generator`` seeded from ``seed``, created once, so successive epochs differ but the
    whole sequence is reproducible; its state is saved in checkpoints (``state_dict``) so a resumed
    run continues it. Under DDP, Lightning replaces the sampler with a ``DistributedSampler`` that
    is seeded by ``seed_everything`` instead.

    Hyper-parameters are deliberately not saved with ``save_hyperparameters``: Lightning refuses to
    log when the model and the data module share a key (e.g. ``seed``) with different values, and
    the CLI already writes the full config.

    Args:
        batch_size: items per batch, for every split.
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: seed of the train-loader shuffling only (splits have their own ``split_seed``).
        perturbation: applied to every val and test (and predict) image, e.g. ``Rotation(45)``;
            see :mod:`uattr.data.perturbations`. The train set is never perturbed.
        pin_memory: pin batches in page-locked memory (faster host-to-GPU copies).
    """

    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        perturbation: Perturbation | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        if perturbation is not None and not callable(perturbation):
            raise TypeError(
                f"perturbation must be a Perturbation (or callable), got {type(perturbation)}."
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.perturbation = perturbation
        self.pin_memory = pin_memory
        self._train_generator = torch.Generator().manual_seed(seed)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """Return the unperturbed ``(train, val, test)`` datasets."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train, val, test = self._build_datasets()
        if self.perturbation is not None:
            val = PerturbedDataset(val, self.perturbation)
            test = PerturbedDataset(test, self.perturbation)
        self.train_dataset, self.val_dataset, self.test_dataset = train, val, test

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}.setup() has not been called; call it before asking for "
                "a dataloader (the Trainer does this for you)."
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            generator=self._train_generator if train else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False)

    def state_dict(self) -> dict[str, Any]:
        return {"train_generator_state": self._train_generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_generator_state" in state_dict:
            self._train_generator.set_state(state_dict["train_generator_state"])

    def _check_shape(self, images: torch.Tensor, where: str) -> None:
        """Check loaded images against the class attributes the model was built from."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects images of shape [N, C, H, W] = [N, "
                f"{', '.join(map(str, expected))}] but the files in {where} hold "
                f"{tuple(images.shape)}; are they the right dataset?"
            )
