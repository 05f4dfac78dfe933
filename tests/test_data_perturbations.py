"""Perturbations: known answers for rotation, noise, blur and the anomaly patch."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from uattr.data import (
    AnomalyPatch,
    GaussianBlur,
    GaussianNoise,
    PerturbedDataset,
    Rotation,
)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- rotation


def test_rotation_by_90_matches_rot90_and_four_times_is_identity(images):
    rot = Rotation(90)
    assert torch.equal(rot(images), torch.rot90(images, 1, dims=(-2, -1)))
    out = images
    for _ in range(4):
        out = rot(out)
    assert torch.equal(out, images)


def test_rotation_is_counter_clockwise():
    # A single bright pixel in the top-right corner moves to the top-left corner under a CCW turn.
    x = torch.zeros(1, 4, 4)
    x[0, 0, 3] = 1.0
    assert Rotation(90)(x)[0, 0, 0] == 1.0
    assert Rotation(-90)(x)[0, 3, 3] == 1.0


def test_rotation_by_180_flips_both_axes_also_on_non_square_images():
    x = torch.rand(2, 1, 6, 9)
    assert torch.equal(Rotation(180)(x), x.flip(-1, -2))
    assert torch.equal(Rotation(-270)(x[:, :, :6, :6]), Rotation(90)(x[:, :, :6, :6]))


def test_rotation_keeps_shape_and_fills_corners_with_zero():
    x = torch.ones(1, 28, 28)
    out = Rotation(45)(x)
    assert out.shape == x.shape
    # The corners come from outside the rotated square: filled with 0; the centre stays 1.
    assert out[0, 0, 0] == 0 and out[0, -1, -1] == 0
    assert out[0, 14, 14] == pytest.approx(1.0)
    assert Rotation(90)(torch.ones(1, 6, 9)).shape == (1, 6, 9)


def test_rotation_batch_equals_item_loop(images):
    rot = Rotation(30)
    assert torch.allclose(rot(images), torch.stack([rot(x) for x in images]))


# ---------------------------------------------------------------- noise


def test_noise_is_reproducible_per_index_and_differs_across_indices(images):
    noise = GaussianNoise(std=0.1, seed=3, clip=False)
    x = images[0]
    assert torch.equal(noise(x, index=7), noise(x, index=7))
    assert torch.equal(noise(x, index=7), GaussianNoise(0.1, seed=3, clip=False)(x, index=7))
    assert not torch.equal(noise(x, index=7), noise(x, index=8))
    assert not torch.equal(noise(x, index=7), GaussianNoise(0.1, seed=4, clip=False)(x, index=7))


def test_noise_batch_equals_item_loop_with_consecutive_indices(images):
    noise = GaussianNoise(std=0.2, seed=1)
    batch = noise(images, index=10)
    loop = torch.stack([noise(x, index=10 + b) for b, x in enumerate(images)])
    assert torch.equal(batch, loop)
    explicit = noise(images, index=torch.arange(10, 15))
    assert torch.equal(batch, explicit)


def test_noise_has_the_requested_std_and_clip_bounds_the_range():
    x = torch.full((1, 64, 64), 0.5)
    delta = GaussianNoise(std=0.1, clip=False)(x) - x
    # 4096 draws: the sample std is within 5% of 0.1 and the mean within 4 standard errors of 0.
    assert delta.std().item() == pytest.approx(0.1, rel=0.05)
    assert abs(delta.mean().item()) < 4 * 0.1 / 64
    clipped = GaussianNoise(std=1.0)(x)
    assert clipped.min() >= 0 and clipped.max() <= 1


# ---------------------------------------------------------------- blur


def test_blur_preserves_a_constant_image_and_its_mean():
    x = torch.full((2, 3, 16, 16), 0.37)
    out = GaussianBlur(sigma=1.5)(x)
    assert torch.allclose(out, x, atol=1e-6)
    assert out.mean().item() == pytest.approx(0.37, abs=1e-6)


def test_blur_default_kernel_and_mass_of_a_centred_delta():
    blur = GaussianBlur(sigma=1.5)
    assert blur.kernel_size == 2 * math.ceil(4.5) + 1 == 11
    x = torch.zeros(1, 21, 21)
    x[0, 10, 10] = 1.0
    out = blur(x)
    # Far from the border the blur only redistributes mass; the kernel is symmetric.
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(out, out.flip(-1)) and torch.allclose(out, out.transpose(-1, -2))
    assert out[0, 10, 10] == out.max()


def test_blur_rejects_a_kernel_larger_than_the_image():
    with pytest.raises(ValueError, match="too large"):
        GaussianBlur(sigma=3.0)(torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="odd"):
        GaussianBlur(sigma=1.0, kernel_size=4)


# ---------------------------------------------------------------- anomaly patch


@pytest.mark.parametrize("index", [0, 1, 2, 3, 17, 123])
def test_patch_lies_exactly_inside_its_box(images, index):
    patch = AnomalyPatch(size=5, seed=2)
    x = images[0]
    out, box = patch(x, index=index)
    assert box.dtype == torch.long and box.shape == (4,)
    x0, y0, x1, y1 = box.tolist()
    assert 0 <= x0 and 0 <= y0 and x1 <= 12 and y1 <= 12
    assert (x1 - x0, y1 - y0) == (5, 5)
    outside = torch.ones(12, 12, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(out[:, outside], x[:, outside])
    # Noise in every pixel of the box: all 3 * 25 values changed.
    assert (out[:, y0:y1, x0:x1] != x[:, y0:y1, x0:x1]).all()


def test_patch_is_the_same_for_the_same_index_and_moves_across_indices(images):
    patch = AnomalyPatch(size=4, seed=0)
    a, box_a = patch(images[0], index=5)
    b, box_b = AnomalyPatch(size=4, seed=0)(images[0], index=5)
    assert torch.equal(a, b) and torch.equal(box_a, box_b)
    boxes = {tuple(patch(images[0], index=i)[1].tolist()) for i in range(20)}
    assert len(boxes) > 5


def test_patch_batch_equals_item_loop(images):
    patch = AnomalyPatch(size=6, seed=9)
    out, boxes = patch(images, index=4)
    assert boxes.shape == (5, 4)
    for b in range(5):
        out_b, box_b = patch(images[b], index=4 + b)
        assert torch.equal(out[b], out_b) and torch.equal(boxes[b], box_b)


def test_patch_constant_fills_and_size_check(images):
    out, box = AnomalyPatch(size=3, fill="white")(images[0])
    x0, y0, x1, y1 = box.tolist()
    assert (out[:, y0:y1, x0:x1] == 1).all()
    out, box = AnomalyPatch(size=3, fill=0.25)(images[0], index=1)
    x0, y0, x1, y1 = box.tolist()
    assert (out[:, y0:y1, x0:x1] == 0.25).all()
    with pytest.raises(ValueError, match="does not fit"):
        AnomalyPatch(size=13)(images[0])
    with pytest.raises(ValueError, match="fill"):
        AnomalyPatch(fill="black")


def test_patch_of_full_image_size_covers_everything(images):
    out, box = AnomalyPatch(size=12, fill="white")(images[0])
    assert box.tolist() == [0, 0, 12, 12] and (out == 1).all()


# ---------------------------------------------------------------- wrapper and checks


def test_perturbed_dataset_passes_the_item_index_and_collates_boxes(images):
    dataset = TensorDataset(images, torch.arange(5))
    patch = AnomalyPatch(size=4, seed=1)
    wrapped = PerturbedDataset(dataset, patch)
    image, label, box = wrapped[3]
    expected, expected_box = patch(images[3], index=3)
    assert torch.equal(image, expected) and torch.equal(box, expected_box) and label == 3
    assert torch.equal(wrapped[-2][0], image)
    batch = next(iter(DataLoader(wrapped, batch_size=5)))
    assert batch[0].shape == (5, 3, 12, 12) and batch[2].shape == (5, 4)
    assert torch.equal(batch[0], patch(images, index=0)[0])

    noisy = PerturbedDataset(dataset, GaussianNoise(0.1))
    assert len(noisy[0]) == 2 and torch.equal(noisy[2][0], noisy[2][0])


def test_perturbations_reject_bad_inputs():
    with pytest.raises(TypeError, match="float"):
        Rotation(90)(torch.zeros(1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        Rotation(90)(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        GaussianNoise(0.1)(torch.zeros(2, 1, 4, 4), index=torch.arange(3))
    with pytest.raises(ValueError, match="seed"):
        GaussianNoise(0.1, seed=-1)
    with pytest.raises(ValueError, match="index"):
        GaussianNoise(0.1)(torch.zeros(1, 4, 4), index=-1)
