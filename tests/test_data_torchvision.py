"""Torchvision-backed data modules, loaded from tiny files in the real on-disk formats.

The files are written here in torchvision's layout (idx-ubyte for MNIST, python pickles for CIFAR,
``.mat`` for SVHN) and parsed by torchvision itself. They cannot match the official MD5 sums, so
CIFAR and SVHN load with ``verify_md5=False``; one test checks that the default refuses them.
"""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest
import scipy.io
import torch

from uattr.data import CIFAR10, CIFAR100, MNIST, SVHN, AnomalyPatch, FashionMNIST

N_TRAIN, N_TEST, VAL = 30, 10, 6


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _write_idx(path, array: np.ndarray, magic: int) -> None:
    """An uncompressed idx file: big-endian int32 magic, one int32 per dim, then uint8 data."""
    with open(path, "wb") as f:
        f.write(struct.pack(">i", magic))
        for dim in array.shape:
            f.write(struct.pack(">i", dim))
        f.write(array.astype(np.uint8).tobytes())


def write_mnist(root, folder: str = "MNIST", side: int = 28) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = _rng(0)
    data = {}
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte", images, 2051)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels, 2049)
        data[split] = (images, labels)
    return data


def write_cifar10(root) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = _rng(1)
    train_x = rng.integers(0, 256, (N_TRAIN, 3072), dtype=np.uint8)
    train_y = rng.integers(0, 10, N_TRAIN).tolist()
    per_batch = N_TRAIN // 5
    for b in range(5):
        rows = slice(b * per_batch, (b + 1) * per_batch)
        entry = {"batch_label": f"batch {b + 1}", "data": train_x[rows], "labels": train_y[rows]}
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump(entry, f)
    test_x = rng.integers(0, 256, (N_TEST, 3072), dtype=np.uint8)
    test_y = rng.integers(0, 10, N_TEST).tolist()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1", "data": test_x, "labels": test_y}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return train_x, train_y, test_x, test_y


def write_cifar100(root) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = _rng(2)
    out = []
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        coarse = [f // 5 for f in fine]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x, "fine_labels": fine, "coarse_labels": coarse}, f)
        out += [x, fine]
    with open(folder / "meta", "wb") as f:
        names = [f"fine{i}" for i in range(100)]
        pickle.dump({"fine_label_names": names, "coarse_label_names": names[:20]}, f)
    return tuple(out)


def write_svhn(root) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = _rng(3)
    data = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # [H, W, C, N] as in the release
        y = rng.integers(1, 11, (n, 1), dtype=np.uint8)  # 1..10, 10 meaning digit 0
        y[0, 0] = 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        data[split] = (x, y)
    return data


def _check_train_val(dm, train_images: torch.Tensor) -> None:
    """Train and val partition the official train split; images are the file's pixels / 255."""
    assert len(dm.train_dataset) == N_TRAIN - VAL and len(dm.val_dataset) == VAL
    indices = list(dm.train_dataset.indices) + list(dm.val_dataset.indices)
    assert sorted(indices) == list(range(N_TRAIN))
    k = dm.val_dataset.indices[0]
    assert torch.equal(dm.val_dataset[0][0], train_images[k].float() / 255)


# ---------------------------------------------------------------- loading real formats


@pytest.mark.parametrize("cls", [MNIST, FashionMNIST])
def test_mnist_family_loads_idx_files(tmp_path, cls):
    data = write_mnist(tmp_path, folder=cls.__name__)
    dm = cls(root=str(tmp_path), val_size=VAL, batch_size=4)
    dm.prepare_data()  # download=False: touches nothing
    dm.setup("fit")
    images, labels = data["t10k"]
    image, label = dm.test_dataset[3]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28)
    assert torch.equal(image, torch.from_numpy(images[3]).float()[None] / 255)
    assert label.dtype == torch.int64 and label.item() == labels[3]
    _check_train_val(dm, torch.from_numpy(data["train"][0])[:, None])
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape == (4, 1, 28, 28) and batch[1].dtype == torch.int64


def test_cifar10_loads_pickles_in_chw_layout(tmp_path):
    train_x, _, test_x, test_y = write_cifar10(tmp_path)
    dm = CIFAR10(root=str(tmp_path), val_size=VAL, verify_md5=False)
    dm.setup()
    image, label = dm.test_dataset[4]
    # CIFAR rows are 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major.
    assert image.shape == (3, 32, 32)
    assert torch.equal(image, torch.from_numpy(test_x[4].reshape(3, 32, 32)).float() / 255)
    assert label.item() == test_y[4]
    _check_train_val(dm, torch.from_numpy(train_x.reshape(-1, 3, 32, 32)))


def test_cifar100_uses_fine_labels(tmp_path):
    train_x, _, test_x, test_fine = write_cifar100(tmp_path)
    dm = CIFAR100(root=str(tmp_path), val_size=VAL, verify_md5=False)
    assert CIFAR100.num_classes == 100 and CIFAR100.in_channels == 3 and CIFAR100.image_size == 32
    dm.setup()
    labels = torch.stack([dm.test_dataset[i][1] for i in range(N_TEST)])
    assert labels.tolist() == test_fine
    assert torch.equal(dm.test_dataset[0][0], torch.from_numpy(test_x[0].reshape(3, 32, 32)) / 255)
    _check_train_val(dm, torch.from_numpy(train_x.reshape(-1, 3, 32, 32)))


def test_svhn_loads_mat_files_and_maps_label_10_to_0(tmp_path):
    data = write_svhn(tmp_path)
    dm = SVHN(root=str(tmp_path), val_size=VAL, verify_md5=False)
    dm.setup()
    x, y = data["test"]
    image, label = dm.test_dataset[0]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image, torch.from_numpy(x[..., 0].transpose(2, 0, 1)).float() / 255)
    assert label.item() == 0  # the file says 10
    assert dm.test_dataset[1][1].item() == y[1, 0] % 10
    train_chw = torch.from_numpy(data["train"][0].transpose(3, 2, 0, 1))
    _check_train_val(dm, train_chw)


def test_perturbation_reaches_torchvision_test_items(tmp_path):
    write_cifar10(tmp_path)
    dm = CIFAR10(root=str(tmp_path), val_size=VAL, verify_md5=False, perturbation=AnomalyPatch(8))
    dm.setup()
    image, label, box = dm.test_dataset[2]
    assert image.shape == (3, 32, 32) and box.shape == (4,) and (box[2:] - box[:2] == 8).all()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("cls", "where", "first_missing"),
    [
        (MNIST, "MNIST/raw", "train-images-idx3-ubyte"),
        (FashionMNIST, "FashionMNIST/raw", "train-images-idx3-ubyte"),
        (CIFAR10, "cifar-10-batches-py", "data_batch_1"),
        (CIFAR100, "cifar-100-python", "train"),
        (SVHN, "", "train_32x32.mat"),
    ],
)
def test_missing_files_say_where_and_what_to_do(tmp_path, cls, where, first_missing):
    dm = cls(root=str(tmp_path / "data"))
    dm.prepare_data()  # no download requested: must not try the network
    assert not (tmp_path / "data").exists()
    with pytest.raises(FileNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    expected_dir = os.path.abspath(os.path.join(tmp_path, "data", where))
    assert message.startswith(f"{cls.dataset_name} not found: the directory {expected_dir} lacks")
    assert first_missing in message
    assert "Pass download=True (or --data.init_args.download=true)" in message
    assert "on a machine with internet, or copy the files there" in message


def test_partly_missing_mnist_lists_only_the_missing_files(tmp_path):
    write_mnist(tmp_path)
    os.remove(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match=r"lacks t10k-labels-idx1-ubyte\. Pass"):
        MNIST(root=str(tmp_path)).setup()


def test_default_md5_check_refuses_files_that_are_not_the_official_release(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="MD5.*verify_md5=False"):
        CIFAR10(root=str(tmp_path), val_size=VAL).setup()
    write_svhn(tmp_path)
    with pytest.raises(RuntimeError, match="MD5"):
        SVHN(root=str(tmp_path), val_size=VAL).setup()


def test_wrong_image_size_and_too_large_val_size(tmp_path):
    write_mnist(tmp_path, side=16)
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\].*16, 16"):
        MNIST(root=str(tmp_path), val_size=VAL).setup()
    write_mnist(tmp_path, folder="FashionMNIST")
    with pytest.raises(ValueError, match="val_size=30 leaves no training images"):
        FashionMNIST(root=str(tmp_path), val_size=N_TRAIN).setup()
    with pytest.raises(ValueError, match="val_size"):
        MNIST(val_size=-1)
