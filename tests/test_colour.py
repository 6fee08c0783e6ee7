"""Stain and colour augmentation: shapes and ranges kept, per-image keyed draws, the HED space of
scikit-image."""

from __future__ import annotations

import numpy as np
import torch
from skimage.color import hed2rgb, rgb2hed

from leanmae.config import AugmentConfig
from leanmae.data.colour import augment_colour, gaussian_blur, hed_perturb, rotate_hue

ALL_ON = AugmentConfig(hed=0.2, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1, blur=1.5)


def _batch(n: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).uniform(0, 1, (n, 3, size, size)), dtype=torch.float32)


def test_all_perturbations_keep_shape_dtype_and_the_unit_range() -> None:
    images = _batch()
    out = augment_colour(images, ALL_ON, seed=0, epoch=1, ids=np.arange(6))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.allclose(out, images)


def test_default_config_leaves_images_untouched() -> None:
    images = _batch()
    assert augment_colour(images, AugmentConfig(), seed=0, epoch=1, ids=np.arange(6)) is images


def test_an_image_gets_the_same_perturbation_in_any_batch_as_on_resume_or_under_ddp() -> None:
    images, ids = _batch(), np.arange(10, 16)
    whole = augment_colour(images, ALL_ON, seed=3, epoch=2, ids=ids)
    halves = torch.cat(
        [augment_colour(images[:3], ALL_ON, 3, 2, ids[:3]), augment_colour(images[3:], ALL_ON, 3, 2, ids[3:])]
    )
    again = augment_colour(images, ALL_ON, seed=3, epoch=2, ids=ids)
    assert torch.allclose(whole, halves, atol=1e-6)
    assert torch.equal(whole, again)


def test_another_epoch_or_seed_draws_other_perturbations() -> None:
    images, ids = _batch(), np.arange(6)
    base = augment_colour(images, ALL_ON, seed=0, epoch=1, ids=ids)
    assert not torch.allclose(base, augment_colour(images, ALL_ON, seed=0, epoch=2, ids=ids))
    assert not torch.allclose(base, augment_colour(images, ALL_ON, seed=1, epoch=1, ids=ids))


def test_hed_scaling_matches_scikit_image_rgb2hed_and_hed2rgb() -> None:
    rng = np.random.default_rng(0)
    stains = rng.uniform(0.0, 0.15, (16, 16, 3))  # positive stain amounts: rgb2hed clips negatives, we do not
    rgb = hed2rgb(stains)
    expected = hed2rgb(rgb2hed(rgb) * np.array([1.3, 0.8, 1.0]))
    tensor = torch.as_tensor(rgb, dtype=torch.float64).permute(2, 0, 1)[None]
    ours = hed_perturb(
        tensor, torch.tensor([[1.3, 0.8, 1.0]], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)
    )
    np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_more_haematoxylin_turns_a_white_background_blue() -> None:
    white = torch.ones(1, 3, 8, 8)
    out = hed_perturb(white, torch.ones(1, 3), torch.tensor([[0.3, 0.0, 0.0]]))
    red, green, blue = out[0, :, 0, 0].tolist()
    assert blue > red and blue > green and red < 1.0


def test_zero_hed_change_zero_hue_turn_and_zero_blur_are_identities() -> None:
    images = _batch(2).double()
    assert torch.allclose(
        hed_perturb(
            images.clamp(min=0.01),
            torch.ones(2, 3, dtype=torch.float64),
            torch.zeros(2, 3, dtype=torch.float64),
        ),
        images.clamp(min=0.01),
        atol=1e-9,
    )
    assert torch.allclose(rotate_hue(images, torch.zeros(2, dtype=torch.float64)), images, atol=1e-9)
    assert torch.allclose(gaussian_blur(images, torch.zeros(2, dtype=torch.float64), 2.0), images, atol=1e-6)


def test_blur_keeps_the_mean_and_lowers_the_variation() -> None:
    images = _batch(2, 32)
    blurred = gaussian_blur(images, torch.tensor([2.0, 2.0]), 2.0)
    assert torch.allclose(blurred.mean(), images.mean(), atol=0.01)
    assert blurred.std() < images.std() / 2


def test_a_half_turn_of_hue_keeps_grey_and_changes_colour() -> None:
    images = torch.tensor([[0.5, 0.5, 0.5], [0.8, 0.2, 0.2]]).view(2, 3, 1, 1)
    out = rotate_hue(images, torch.tensor([0.5, 0.5]))
    assert torch.allclose(out[0], images[0], atol=1e-6)
    assert out[1, 0, 0, 0] < 0.5  # red no longer dominates
