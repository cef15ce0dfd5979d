"""Shared losses and metrics against known answers, and the project's channel order in MONAI's regularisers."""

from __future__ import annotations

import math

import pytest
import torch

from deepultrasound.errors import InputError
from deepultrasound.losses import (
    BendingEnergy,
    DiceLoss,
    FirstOrderSmoothness,
    GlobalMutualInformationLoss,
    LocalNCCLoss,
    dice_score,
    hausdorff_distance_95,
    psnr,
    ssim,
)
from deepultrasound.spatial import labels_to_one_hot

HEIGHT, WIDTH = 12, 20  # unequal, so that a swapped channel order would show


def _image(seed: int, shape: tuple[int, ...] = (2, 1, 24, 24)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _field(lateral, axial) -> torch.Tensor:
    """``(1, 2, HEIGHT, WIDTH)`` displacement from two functions of the pixel coordinates ``(y, x)``."""
    y, x = torch.meshgrid(
        torch.arange(HEIGHT, dtype=torch.float64), torch.arange(WIDTH, dtype=torch.float64), indexing="ij"
    )
    return torch.stack([lateral(y, x) + 0 * x, axial(y, x) + 0 * y])[None]


# ---------------------------------------------------------------- similarity


def test_lncc_is_minus_one_for_identical_and_inverted_images_and_near_zero_for_independent_ones():
    image = _image(0) - 0.5  # zero-mean: the windows' zero padding at the borders is its own negative
    loss = LocalNCCLoss(kernel_size=7)
    assert loss(image, image).item() == pytest.approx(-1.0, abs=1e-4)
    assert loss(-image, image).item() == pytest.approx(-1.0, abs=1e-4)  # squared correlation: sign-blind
    assert abs(loss(_image(1) - 0.5, image).item()) < 0.1
    with pytest.raises(ValueError, match="shape"):
        loss(image, image[..., :20])


def test_mutual_information_is_highest_for_images_that_determine_each_other():
    image = _image(0, (1, 1, 32, 32))
    loss = GlobalMutualInformationLoss()
    identical, inverted, independent = (
        loss(image, image),
        loss(1 - image, image),
        loss(_image(1, (1, 1, 32, 32)), image),
    )
    assert identical.item() == pytest.approx(inverted.item(), rel=1e-3)  # MI is blind to an invertible intensity map
    assert identical < independent - 1.0


# ---------------------------------------------------------------- regularisers


@pytest.mark.parametrize(
    ("lateral", "axial"),
    [(lambda y, x: 2.5, lambda y, x: -1.0), (lambda y, x: 0.3 * x - 0.2 * y + 1, lambda y, x: -0.01 * y + 0.05 * x)],
)
def test_bending_energy_is_zero_for_affine_displacements(lateral, axial):
    displacement = _field(lateral, axial)
    assert BendingEnergy()(displacement).item() == pytest.approx(0.0, abs=1e-12)
    assert BendingEnergy(normalize=True)(displacement).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("normalize", "expected"), [(False, 2 * 0.1**2), (True, 2 * 0.1**2 * WIDTH**2)])
def test_bending_energy_of_a_lateral_parabola(normalize, expected):
    """``u_x = a x^2``: ``u_xx = 2a`` on channel 0 only, so the mean over both channels is ``2 a^2``; normalised
    coordinates ``x / W`` and displacement ``u / W`` scale it by ``W^2`` (by ``W^4 / H^2`` with channels swapped)."""
    displacement = _field(lambda y, x: 0.1 * x**2, lambda y, x: 0.0)
    assert BendingEnergy(normalize=normalize)(displacement).item() == pytest.approx(expected)


@pytest.mark.parametrize(("normalize", "expected"), [(False, 0.3**2 / 2), (True, (0.3 * HEIGHT / WIDTH) ** 2 / 2)])
def test_first_order_smoothness_of_a_shear(normalize, expected):
    """``u_x = s y``: ``du_x/dy = s`` on channel 0 only; normalised, ``d(u_x / W)/d(y / H) = s H / W``."""
    displacement = _field(lambda y, x: 0.3 * y, lambda y, x: 0.0)
    assert FirstOrderSmoothness(normalize=normalize)(displacement).item() == pytest.approx(expected)
    assert FirstOrderSmoothness()(_field(lambda y, x: 4.0, lambda y, x: -2.0)).item() == 0.0


@pytest.mark.parametrize("loss", [BendingEnergy(), FirstOrderSmoothness()])
def test_regularisers_refuse_fields_that_are_not_2d_displacements(loss):
    with pytest.raises(InputError, match=r"\(B, 2, H, W\)"):
        loss(torch.zeros(1, 3, 8, 8))


# ---------------------------------------------------------------- label metrics


def _labels(rows: slice, cols: slice) -> torch.Tensor:
    labels = torch.zeros(1, 1, 24, 24, dtype=torch.int64)
    labels[..., rows, cols] = 1
    return labels


def test_dice_of_identical_maps_is_one_and_of_a_known_overlap_its_ratio():
    square = _labels(slice(6, 18), slice(6, 14))  # 12 x 8
    shifted = _labels(slice(6, 18), slice(8, 16))  # overlap 12 x 6
    torch.testing.assert_close(dice_score(square, square, num_classes=3), torch.tensor([[1.0, 1.0]]))  # 2: absent
    assert dice_score(square, shifted, num_classes=2).item() == pytest.approx(2 * 72 / (96 + 96))
    one_hot = labels_to_one_hot(square, 2)
    assert DiceLoss()(one_hot, one_hot).item() == pytest.approx(0.0, abs=1e-5)
    assert DiceLoss(include_background=False)(labels_to_one_hot(shifted, 2), one_hot).item() == pytest.approx(0.25)
    with pytest.raises(InputError, match="differ in shape"):
        dice_score(square, square[..., :20], num_classes=2)


@pytest.mark.parametrize(
    ("shifted", "spacing", "expected"),
    [
        (_labels(slice(6, 18), slice(8, 16)), None, 2.0),  # 2 columns
        (_labels(slice(6, 18), slice(8, 16)), (0.5, 1.0), 1.0),  # 2 columns of 0.5 mm
        (_labels(slice(8, 20), slice(6, 14)), (0.5, 1.0), 2.0),  # 2 rows of 1 mm
    ],
)
def test_hausdorff_95_of_a_translated_square_is_the_shift_in_spacing_units(shifted, spacing, expected):
    square = _labels(slice(6, 18), slice(6, 14))
    assert hausdorff_distance_95(square, shifted, 2, spacing=spacing).item() == pytest.approx(expected)
    with pytest.raises(InputError, match="lateral, axial"):
        hausdorff_distance_95(square, shifted, 2, spacing=(1.0, 0.0))


# ---------------------------------------------------------------- image metrics


@pytest.mark.parametrize(("data_range", "expected_db"), [(1.0, 20.0), (2.0, 20.0 + 20 * math.log10(2))])
def test_psnr_of_a_constant_error_is_known(data_range, expected_db):
    target = _image(0)
    torch.testing.assert_close(psnr(target + 0.1, target, data_range=data_range), torch.full((2,), expected_db))


def test_ssim_is_one_for_identical_images_and_depends_on_the_stated_data_range():
    target, noisy = _image(0), _image(0) + _image(1) - 0.5  # noise as strong as the signal
    torch.testing.assert_close(ssim(target, target, data_range=1.0), torch.ones(2))
    assert (ssim(noisy, target, data_range=1.0) < 0.8).all()
    assert (ssim(noisy, target, data_range=100.0) > ssim(noisy, target, data_range=1.0)).all()


@pytest.mark.parametrize(
    ("metric", "prediction", "data_range", "message"),
    [
        (psnr, torch.zeros(2, 1, 24, 20), 1.0, "one shape"),
        (ssim, torch.zeros(2, 1, 24, 24), 0.0, "data_range must be"),
        (ssim, torch.zeros(2, 1, 8, 8), 1.0, "smaller than the 11-pixel window"),
    ],
)
def test_image_metrics_refuse_ill_inputs(metric, prediction, data_range, message):
    target = torch.zeros_like(prediction) if prediction.shape[-1] != 20 else torch.zeros(2, 1, 24, 24)
    with pytest.raises(InputError, match=message):
        metric(prediction, target, data_range=data_range)
