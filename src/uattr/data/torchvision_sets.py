"""Data modules over torchvision's datasets: MNIST, FashionMNIST, CIFAR10, CIFAR100 and SVHN.

Files are parsed by the ``torchvision.datasets`` classes in torchvision's on-disk layout under
``root``; the uint8 pixels are then kept in memory and scaled to [0, 1] per item, exactly as
``ToTensor`` would (``x / 255``). A validation set of ``val_size`` images is carved out of the
official train split with a permutation seeded by ``split_seed``; the official test split is the
test set.

Nothing downloads unless ``download=True``, and then only in ``prepare_data`` (rank zero of each
node under DDP). Missing files raise a ``FileNotFoundError`` naming the directory searched.

MD5 checks: torchvision verifies the MD5 of every CIFAR and SVHN file on load (MNIST's raw files
have no checksum there; only their presence is checked). ``verify_md5=False`` loads through a
subclass of the torchvision class whose checksums are ``None``, so only presence is checked; use it
for files you packed yourself (e.g. tests, or a re-saved subset), never to silence a corrupted
download.
"""

from __future__ import annotations

import os
from typing import ClassVar

import torch
import torchvision.datasets as tvd
from torch.utils.data import Dataset, Subset

from uattr.data.base import ImageDataModule, ImageTensorDataset
from uattr.data.perturbations import Perturbation
from uattr.data.splits import random_split_indices

__all__ = ["CIFAR10", "CIFAR100", "MNIST", "SVHN", "FashionMNIST", "TorchvisionDataModule"]

_HOW_TO_GET = (
    "Pass download=True (or --data.init_args.download=true) on a machine with internet, "
    "or copy the files there."
)


class _CIFAR10Unchecked(tvd.CIFAR10):
    """torchvision's CIFAR10 with the MD5 checks off (presence only); see the module docstring."""

    train_list = [[name, None] for name, _ in tvd.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in tvd.CIFAR10.test_list]
    meta = {**tvd.CIFAR10.meta, "md5": None}


class _CIFAR100Unchecked(tvd.CIFAR100):
    """torchvision's CIFAR100 with the MD5 checks off (presence only); see the module docstring."""

    train_list = [[name, None] for name, _ in tvd.CIFAR100.train_list]
    test_list = [[name, None] for name, _ in tvd.CIFAR100.test_list]
    meta = {**tvd.CIFAR100.meta, "md5": None}


class _SVHNUnchecked(tvd.SVHN):
    """torchvision's SVHN with the MD5 checks off (presence only); see the module docstring."""

    split_list = {k: [url, name, None] for k, (url, name, _) in tvd.SVHN.split_list.items()}


class TorchvisionDataModule(ImageDataModule):
    """Base of the torchvision-backed data modules (see the module docstring).

    Args:
        root: the data directory, in torchvision's layout (e.g. ``<root>/MNIST/raw/``).
        download: download the files in ``prepare_data`` if they are missing.
        val_size: images carved from the official train split for validation.
        split_seed: seed of the train/val permutation (independent of ``seed``).
        verify_md5: check torchvision's MD5 checksums when loading (CIFAR, SVHN).
        batch_size: items per batch.
        num_workers: DataLoader worker processes.
        seed: seed of the train-loader shuffling.
        perturbation: applied to val and test images (see :mod:`uattr.data.perturbations`).
        pin_memory: pin batches in page-locked memory.
    """

    dataset_name: ClassVar[str]

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        val_size: int = 5000,
        split_seed: int = 0,
        verify_md5: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        perturbation: Perturbation | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, perturbation, pin_memory)
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}.")
        self.root = str(root)
        self.download = download
        self.val_size = val_size
        self.split_seed = split_seed
        self.verify_md5 = verify_md5

    @property
    def data_dir(self) -> str:
        """The absolute directory where the dataset's files must be."""
        raise NotImplementedError

    def _required_files(self) -> list[str]:
        """The files torchvision needs in :attr:`data_dir` (train and test)."""
        raise NotImplementedError

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Load one official split as uint8 ``[N, C, H, W]`` images and int64 ``[N]`` labels."""
        raise NotImplementedError

    def _fetch(self) -> None:
        """Download both official splits with torchvision (MD5-checked there)."""
        raise NotImplementedError

    def _missing_files(self) -> list[str]:
        return [
            f for f in self._required_files() if not os.path.isfile(os.path.join(self.data_dir, f))
        ]

    def prepare_data(self) -> None:
        if self.download and (self.verify_md5 or self._missing_files()):
            self._fetch()

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        missing = self._missing_files()
        if missing:
            raise FileNotFoundError(
                f"{self.dataset_name} not found: the directory {self.data_dir} lacks "
                f"{', '.join(missing)}. {_HOW_TO_GET}"
            )
        try:
            train_x, train_y = self._load(train=True)
            test_x, test_y = self._load(train=False)
        except RuntimeError as err:
            # The files exist (checked above), so torchvision's "not found or corrupted" means
            # a checksum mismatch.
            raise RuntimeError(
                f"{self.dataset_name} files in {self.data_dir} exist but torchvision refused them "
                f"({err}): they fail its MD5 check, so they are corrupted or not the official "
                "release. Delete them and download again, or pass verify_md5=False if you packed "
                "them yourself."
            ) from err
        self._check_shape(train_x, self.data_dir)
        self._check_shape(test_x, self.data_dir)
        if self.val_size >= len(train_y):
            raise ValueError(
                f"val_size={self.val_size} leaves no training images: the {self.dataset_name} "
                f"train split in {self.data_dir} has only {len(train_y)}."
            )
        train_idx, val_idx = random_split_indices(len(train_y), self.val_size, self.split_seed)
        full = ImageTensorDataset(train_x, train_y)
        test = ImageTensorDataset(test_x, test_y)
        return Subset(full, train_idx.tolist()), Subset(full, val_idx.tolist()), test


class MNIST(TorchvisionDataModule):
    """MNIST (60,000 train / 10,000 test, 1x28x28), files in ``<root>/MNIST/raw/``.

    The raw files are the four uncompressed idx files (``train-images-idx3-ubyte``, ...);
    torchvision's legacy ``<root>/MNIST/processed/{training,test}.pt`` are accepted too.
    """

    dataset_name = "MNIST"
    num_classes = 10
    in_channels = 1
    image_size = 28
    _torchvision_class: ClassVar[type[tvd.MNIST]] = tvd.MNIST

    @property
    def data_dir(self) -> str:
        return os.path.abspath(os.path.join(self.root, self._torchvision_class.__name__, "raw"))

    def _required_files(self) -> list[str]:
        return [
            f"{split}-{kind}"
            for split in ("train", "t10k")
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        ]

    def _missing_files(self) -> list[str]:
        processed = os.path.join(os.path.dirname(self.data_dir), "processed")
        if all(os.path.isfile(os.path.join(processed, f)) for f in ("training.pt", "test.pt")):
            return []
        return super()._missing_files()

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ds = self._torchvision_class(self.root, train=train, download=False)
        return ds.data.unsqueeze(1).contiguous(), ds.targets.long()

    def _fetch(self) -> None:
        for train in (True, False):
            self._torchvision_class(self.root, train=train, download=True)


class FashionMNIST(MNIST):
    """Fashion-MNIST (60,000 train / 10,000 test, 1x28x28) in ``<root>/FashionMNIST/raw/``."""

    dataset_name = "FashionMNIST"
    _torchvision_class = tvd.FashionMNIST


class CIFAR10(TorchvisionDataModule):
    """CIFAR-10 (50,000 train / 10,000 test, 3x32x32), files in ``<root>/cifar-10-batches-py/``."""

    dataset_name = "CIFAR10"
    num_classes = 10
    in_channels = 3
    image_size = 32
    _torchvision_class: ClassVar[type[tvd.CIFAR10]] = tvd.CIFAR10
    _unchecked_class: ClassVar[type[tvd.CIFAR10]] = _CIFAR10Unchecked

    @property
    def data_dir(self) -> str:
        return os.path.abspath(os.path.join(self.root, self._torchvision_class.base_folder))

    def _required_files(self) -> list[str]:
        cls = self._torchvision_class
        return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        cls = self._torchvision_class if self.verify_md5 else self._unchecked_class
        ds = cls(self.root, train=train, download=False)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
        return images, torch.as_tensor(ds.targets, dtype=torch.long)

    def _fetch(self) -> None:
        for train in (True, False):
            self._torchvision_class(self.root, train=train, download=True)


class CIFAR100(CIFAR10):
    """CIFAR-100 fine labels (50,000 / 10,000, 3x32x32), files in ``<root>/cifar-100-python/``."""

    dataset_name = "CIFAR100"
    num_classes = 100
    _torchvision_class = tvd.CIFAR100
    _unchecked_class = _CIFAR100Unchecked


class SVHN(TorchvisionDataModule):
    """SVHN cropped digits (73,257 train / 26,032 test, 3x32x32), ``<root>/{train,test}_32x32.mat``.

    Label 10 in the files means digit 0; torchvision maps it to 0. The ``extra`` split is not used.
    """

    dataset_name = "SVHN"
    num_classes = 10
    in_channels = 3
    image_size = 32

    @property
    def data_dir(self) -> str:
        return os.path.abspath(self.root)

    def _required_files(self) -> list[str]:
        return [tvd.SVHN.split_list[split][1] for split in ("train", "test")]

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        cls = tvd.SVHN if self.verify_md5 else _SVHNUnchecked
        ds = cls(self.root, split="train" if train else "test", download=False)
        return torch.from_numpy(ds.data).contiguous(), torch.from_numpy(ds.labels).long()

    def _fetch(self) -> None:
        for split in ("train", "test"):
            tvd.SVHN(self.root, split=split, download=True)
